"""What every planner returns (`Plan`) and shares (`Planner`: input checks, FSEP evaluation of a placement).

Notation: N devices, E experts, C slots per device, G devices per node, K = N / G nodes.
loads[i, j]: tokens from source device i routed to expert j (integer counts; sum a window rather than average it).
A planner also takes a window [W, N, E] of micro-batches: it plans from their sum, and planners that choose between
candidates by what the runtime will see (LAER+) score them on each micro-batch of the window.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import NamedTuple

import numpy as np

from training.placement import Placement
from training.planner.objective import PlanObjective
from training.routing import fsep_expected, fsep_routing, fsep_summaries, traffic_summary


class RoutingMode(Enum):
    """How the runtime routes tokens over a plan's layout."""

    FSEP = "fsep"  # always the FSEP even-split rule (`training.routing.split_row`), whatever the plan carries
    QUOTAS = "quotas"  # a plan's explicit per-(source, expert) quotas when it has them (fsep_routed=False), else FSEP


@dataclass(frozen=True)
class Plan:
    """One layer's expert layout and token routing for the next step(s)."""

    layout: Placement  # which expert each slot restores (layout.slots [N, C])
    device_tokens: np.ndarray  # [N] int64, tokens each device computes (= routing.sum((0, 1)))
    est_time_s: float  # the planner objective: one forward + backward of the layer under this plan
    algorithm: str  # registry name of the planner that made it
    gap: float | None = None  # relative MIP gap for `milp` (0: proven optimal); None for heuristics
    # True: routing is the FSEP even-split rule, so the runtime can apply it to any loads; False: routing is explicit
    # per-(source, expert, device) quotas (min-max flow, MILP) that the runtime follows as fractions.
    fsep_routed: bool = True
    # Builds the [N, E, N] routing on first access (it can be large); excluded from equality and repr.
    routing_fn: Callable[[], np.ndarray] = field(default=None, repr=False, compare=False)

    @cached_property
    def routing(self) -> np.ndarray:
        """[N, E, N] int64: tokens from source i for expert j computed on device d."""
        return self.routing_fn()


class Estimate(NamedTuple):
    """A layout's objective under the expected (fractional) FSEP split."""

    objective: float  # objective with the fractional split
    tokens: np.ndarray  # [N] float, expected tokens per device
    margin: float  # |exact objective - objective| <= margin (PlanObjective.expected_margin), to skip hopeless layouts


def check_loads(loads, num_devices: int, slots_per_device: int) -> np.ndarray:
    """loads as int64 [N, E] (or a window [W, N, E]), or a ValueError saying what is wrong with them."""
    a = np.asarray(loads)
    if a.ndim not in (2, 3) or a.shape[-2] != num_devices or (a.ndim == 3 and a.shape[0] < 1):
        raise ValueError(f"loads must be [N={num_devices}, E] (or a window [W, N, E]), got shape {a.shape}")
    if a.shape[-1] < 1:
        raise ValueError("loads must have at least one expert column")
    kind = a.dtype.kind  # i/u integer, f float; the dtype kind is cheaper to test than np.issubdtype (per plan)
    if kind not in "iuf":
        raise ValueError(f"loads must be real numbers, got dtype {a.dtype}")
    if kind == "f" and not np.all(np.isfinite(a)):
        at = tuple(np.argwhere(~np.isfinite(a))[0].tolist())
        raise ValueError(f"loads must be finite; loads[{', '.join(map(str, at))}] = {a[at]}")
    if kind != "u" and np.any(a < 0):
        at = tuple(np.argwhere(a < 0)[0].tolist())
        raise ValueError(f"loads must be non-negative; loads[{', '.join(map(str, at))}] = {a[at]}")
    if kind == "f" and not np.all(np.equal(np.mod(a, 1), 0)):
        raise ValueError("loads must be integer token counts (sum a window of micro-batches rather than average it)")
    e = a.shape[-1]
    if num_devices * slots_per_device < e:
        raise ValueError(
            f"N*C = {num_devices}*{slots_per_device} = {num_devices * slots_per_device} slots cannot hold E={e} experts"
        )
    return a.astype(np.int64)


class Planner(ABC):
    """Base of every planner: `plan(loads)` checks the input and calls `_plan`; subclasses set `name`."""

    name = "base"

    def __init__(self, num_devices: int, slots_per_device: int, devices_per_node: int,
                 objective: PlanObjective | None = None):
        for key, v in (("num_devices", num_devices), ("slots_per_device", slots_per_device),
                       ("devices_per_node", devices_per_node)):
            if int(v) != v or v < 1:
                raise ValueError(f"{self.name}: {key} must be a positive integer, got {v!r}")
        if num_devices % devices_per_node:
            raise ValueError(f"{self.name}: num_devices={num_devices} is not a multiple of devices_per_node={devices_per_node}")
        self.n, self.c, self.g = int(num_devices), int(slots_per_device), int(devices_per_node)
        self.k = self.n // self.g
        self.objective = objective or PlanObjective.for_model()

    def plan(self, loads) -> Plan:
        """The plan for loads [N, E], or for a window [W, N, E] of micro-batches (planned from their sum)."""
        a = check_loads(loads, self.n, self.c)
        return self._plan(a) if a.ndim == 2 else self._plan_window(a)

    @abstractmethod
    def _plan(self, loads: np.ndarray) -> Plan:
        """The plan for checked loads [N, E] int64."""

    def _plan_window(self, window: np.ndarray) -> Plan:
        """The plan for a checked window [W, N, E] int64: by default the plan of its sum."""
        return self._plan(window.sum(0))

    # Shared helpers ---------------------------------------------------------------------------------------------
    def score(self, loads: np.ndarray, slots: np.ndarray) -> tuple[float, np.ndarray]:
        """(objective, device_tokens) of a placement under the FSEP routing rule."""
        return self.scores(loads, [slots])[0]

    def scores(self, loads: np.ndarray, layouts: list[np.ndarray]) -> list[tuple[float, np.ndarray]]:
        """`score` of several placements [N, C], in one compiled call."""
        tokens, intra, inter = fsep_summaries(loads, np.stack(layouts), self.g)
        return list(zip(self.objective.objectives(tokens, intra, inter).tolist(), tokens))

    def expected_score(self, loads: np.ndarray, slots: np.ndarray) -> Estimate:
        """`score` with the even split taken fractionally: cheaper, for comparing many candidate layouts."""
        return self.expected_scores(loads, [slots])[0]

    def expected_scores(self, loads: np.ndarray, layouts: list[np.ndarray]) -> list[Estimate]:
        """`expected_score` of several placements [N, C], in one compiled call."""
        return [Estimate(*x) for x in zip(*self.expected_arrays(loads, np.stack(layouts)))]

    def expected_arrays(self, loads: np.ndarray, layouts: np.ndarray) -> tuple[list, np.ndarray, list]:
        """`expected_scores` of placements layouts [T, N, C] as (objectives [T], tokens [T, N], margins [T])."""
        traffic, spread = fsep_expected(loads, layouts, loads.shape[1], self.g)
        objs = self.objective.objectives(*traffic)
        margins = self.objective.expected_margin(spread, self.n, self.c, objs)
        return objs.tolist(), traffic.device_tokens, margins.tolist()

    def fsep_plan(self, loads: np.ndarray, slots: np.ndarray, score: tuple | None = None) -> Plan:
        """A Plan that routes with the FSEP rule on the given placement."""
        layout = Placement(slots, loads.shape[1])
        obj, tokens = score if score is not None else self.score(loads, layout.slots)
        g = self.g
        return Plan(layout, tokens, obj, self.name, routing_fn=lambda: fsep_routing(loads, layout, g))

    def routed_plan(self, loads: np.ndarray, slots: np.ndarray, routing: np.ndarray, gap: float | None = None) -> Plan:
        """A Plan with an explicit routing [N, E, N]."""
        routing = np.asarray(routing, dtype=np.int64)
        traffic = traffic_summary(routing, self.g)
        return Plan(Placement(slots, loads.shape[1]), traffic.device_tokens, self.objective.objective(*traffic),
                    self.name, gap, fsep_routed=False, routing_fn=lambda: routing)
