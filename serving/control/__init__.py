"""OServe's temporal policy (pure: numbers in, frozen decisions out): the closed-loop controller (forecast -> plan
-> switch plan -> hysteresis decision) and the Llumnix-style migration baseline. serving.sim.closedloop executes
them in the simulator."""

from serving.control.config import ControllerConfig, PlannerKind, SwitchMode
from serving.control.controller import (
    Controller,
    Decision,
    ReloadSwitch,
    check_controller,
    expected_wait,
    should_switch,
    switch_cost,
)
from serving.control.forecast import Forecaster, LastValue, Oracle, check_history
from serving.control.migration import Migration, MigrationMove, balance_moves, kv_transfer_s
from serving.control.planner import ForecastPlanner

__all__ = [
    "ControllerConfig", "PlannerKind", "SwitchMode", "Controller", "Decision", "ReloadSwitch", "check_controller",
    "expected_wait", "should_switch", "switch_cost", "Forecaster", "LastValue", "Oracle", "check_history",
    "Migration", "MigrationMove", "balance_moves", "kv_transfer_s", "ForecastPlanner",
]
