"""The LAER-MoE paper's planner, as their C++ greedy_balancer does it at any node count: two replica-count
candidates (even; the priority queue), LPT placement by the paper's node rule, FSEP routing, keep the cheaper."""

from __future__ import annotations

import numpy as np

from training.planner.base import Estimate, Plan, Planner
from training.planner.lpt import PlacementRule, even_replicas, lpt_place, priority_replicas


def laer_counts(loads: np.ndarray, n: int, c: int, g: int) -> list[np.ndarray]:
    """Replica-count vectors [E] of the paper's two candidates (even when E divides N*C; the priority queue)."""
    w = loads.sum(0)
    return [r for r in (even_replicas(w.size, n * c), priority_replicas(w, n * c, n // g)) if r is not None]


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


def laer_candidates(loads: np.ndarray, n: int, c: int, g: int) -> list[np.ndarray]:
    """Placements [N, C] of the paper's candidates."""
    return place_counts(loads, laer_counts(loads, n, c, g), n, c, g)


def laer_pick(planner: Planner, loads: np.ndarray, cands: list[np.ndarray]) -> tuple[int, list[Estimate] | None]:
    """Index of the paper's pick among its candidates: the lower objective under the FSEP rule (expected split; the
    first on ties, as the paper's strict `<`); and the candidates' estimates (None when there is one candidate)."""
    if len(cands) == 1:
        return 0, None
    scored = planner.expected_scores(loads, cands)
    return int(np.argmin([est.objective for est in scored])), scored


class Laer(Planner):
    name = "laer"

    def _plan(self, loads: np.ndarray) -> Plan:
        # 1. Candidates; 2. score each with the objective under the FSEP rule (expected even split); 3. keep the
        #    cheaper, and compute its exact integer routing summary.
        cands = laer_candidates(loads, self.n, self.c, self.g)
        return self.fsep_plan(loads, cands[laer_pick(self, loads, cands)[0]])
