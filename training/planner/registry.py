"""Planner names -> classes. A new planner is one file with a `Planner` subclass plus one line here."""

from __future__ import annotations

from training.planner.base import Planner
from training.planner.eplb import EPLB
from training.planner.flexmoe import FlexMoE
from training.planner.laer import Laer
from training.planner.laer_plus import LaerPlus
from training.planner.milp import MILP
from training.planner.objective import PlanObjective
from training.planner.static import FsdpEP, StaticEP

PLANNERS: dict[str, type[Planner]] = {
    "static_ep": StaticEP,
    "fsdp_ep": FsdpEP,
    "laer": Laer,
    "laer_plus": LaerPlus,
    "flexmoe": FlexMoE,
    "eplb": EPLB,
    "milp": MILP,
}


def make_planner(name: str, num_devices: int, slots_per_device: int, devices_per_node: int,
                 objective: PlanObjective | None = None, **options) -> Planner:
    """A planner by registry name. options go to the planner (e.g. time_limit_s for milp, search_rounds for laer_plus)."""
    if name not in PLANNERS:
        raise ValueError(f"unknown planner {name!r}; known: {sorted(PLANNERS)}")
    try:
        return PLANNERS[name](num_devices, slots_per_device, devices_per_node, objective=objective, **options)
    except TypeError as err:
        raise ValueError(f"planner {name!r}: bad option ({err})") from None
