"""Load-balancing planners for FSEP: pure numpy/scipy policies from per-device expert loads to a frozen `Plan`.
Their inner loops run compiled with numba (`kernels.py`), where that is what keeps them within the paper's solve times.

    from training.planner import make_planner
    planner = make_planner("laer", num_devices=N, slots_per_device=C, devices_per_node=G)
    plan = planner.plan(loads)   # loads [N, E]: tokens from source device i for expert j
"""

from training.planner.async_planner import AsyncPlanner
from training.planner.base import Plan, Planner, RoutingMode, check_loads
from training.planner.bound import add_replicas, replica_lower_bound, waterfill_replicas
from training.planner.objective import PlanObjective
from training.planner.registry import PLANNERS, make_planner

__all__ = ["AsyncPlanner", "Plan", "Planner", "PlanObjective", "PLANNERS", "RoutingMode", "add_replicas", "check_loads",
           "make_planner", "replica_lower_bound", "waterfill_replicas"]
