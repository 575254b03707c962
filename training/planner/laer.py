"""The LAER-MoE paper's planner, as their C++ greedy_balancer does it at any node count: two replica-count
candidates (even; the priority queue), LPT placement by the paper's node rule, FSEP routing, keep the cheaper."""

from __future__ import annotations

from enum import Enum

import numpy as np

from training.planner.base import Estimate, Plan, Planner
from training.planner.lpt import PlacementRule, even_replicas, lpt_place, priority_replicas
from training.planner.objective import PlanObjective


class ReplicaCandidates(Enum):
    """Which replica-count candidates the paper's planner weighs. Its ablation (Fig. 12; the `no_even` / `no_pq`
    flags of their greedy_balancer) keeps one of the two."""

    both = "both"  # even and the priority queue, the cheaper kept: the paper's planner
    even = "even"  # N*C / E replicas per expert only (their no_pq)
    priority = "priority"  # the priority queue only (their no_even)


def laer_counts(loads: np.ndarray, n: int, c: int, g: int,
                candidates: ReplicaCandidates = ReplicaCandidates.both) -> list[np.ndarray]:
    """Replica-count vectors [E] of the paper's candidates (even when E divides N*C; the priority queue)."""
    w = loads.sum(0)
    even = None if candidates is ReplicaCandidates.priority else even_replicas(w.size, n * c)
    if candidates is ReplicaCandidates.even:
        if even is None:
            raise ValueError(f"laer: candidates=even needs E={w.size} to divide N*C={n * c}")
        return [even]
    return [r for r in (even, priority_replicas(w, n * c, n // g)) if r is not None]


def place_counts(loads: np.ndarray, counts: list[np.ndarray], n: int, c: int, g: int,
                 rule: PlacementRule = PlacementRule.PAPER) -> list[np.ndarray]:
    """LPT placements [N, C] of the distinct count vectors."""
    w = loads.sum(0)
    out, seen = [], set()
    for r in counts:
        key = np.asarray(r, dtype=np.int64).tobytes()
        if key in seen:
            continue
        seen.add(key)
        out.append(lpt_place(w, r, n, c, g, rule))
    return out


def laer_candidates(loads: np.ndarray, n: int, c: int, g: int,
                    candidates: ReplicaCandidates = ReplicaCandidates.both) -> list[np.ndarray]:
    """Placements [N, C] of the paper's candidates."""
    return place_counts(loads, laer_counts(loads, n, c, g, candidates), n, c, g)


def laer_pick(planner: Planner, loads: np.ndarray, cands: list[np.ndarray]) -> tuple[int, list[Estimate] | None]:
    """Index of the paper's pick among its candidates: the lower objective under the FSEP rule (expected split; the
    first on ties, as the paper's strict `<`); and the candidates' estimates (None when there is one candidate)."""
    if len(cands) == 1:
        return 0, None
    scored = planner.expected_scores(loads, cands)
    return int(np.argmin([est.objective for est in scored])), scored


class Laer(Planner):
    name = "laer"

    def __init__(self, num_devices: int, slots_per_device: int, devices_per_node: int,
                 objective: PlanObjective | None = None,
                 candidates: ReplicaCandidates | str = ReplicaCandidates.both):
        super().__init__(num_devices, slots_per_device, devices_per_node, objective)
        try:
            self.candidates = ReplicaCandidates(candidates)
        except ValueError:
            raise ValueError(f"laer: candidates must be one of {[x.value for x in ReplicaCandidates]}, "
                             f"got {candidates!r}") from None

    def _plan(self, loads: np.ndarray) -> Plan:
        # 1. Candidates; 2. score each with the objective under the FSEP rule (expected even split); 3. keep the
        #    cheaper, and compute its exact integer routing summary.
        cands = laer_candidates(loads, self.n, self.c, self.g, self.candidates)
        return self.fsep_plan(loads, cands[laer_pick(self, loads, cands)[0]])
