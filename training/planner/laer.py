"""The LAER-MoE paper's planner: two replica-count candidates, LPT placement, FSEP routing, keep the cheaper."""

from __future__ import annotations

import numpy as np

from training.planner.base import Plan, Planner
from training.planner.lpt import even_replicas, lpt_place, priority_replicas


def laer_counts(loads: np.ndarray, n: int, c: int, g: int) -> list[np.ndarray]:
    """Replica-count vectors [E] of the paper's two candidates (even when E divides N*C; the priority queue)."""
    w = loads.sum(0)
    return [r for r in (even_replicas(w.size, n * c), priority_replicas(w, n * c, n // g)) if r is not None]


def place_counts(loads: np.ndarray, counts: list[np.ndarray], n: int, c: int, g: int) -> list[np.ndarray]:
    """LPT placements [N, C] of the distinct count vectors."""
    w = loads.sum(0)
    out, seen = [], set()
    for r in counts:
        key = np.asarray(r, dtype=np.int64).tobytes()
        if key in seen:
            continue
        seen.add(key)
        out.append(lpt_place(w, r, n, c, g))
    return out


def laer_candidates(loads: np.ndarray, n: int, c: int, g: int) -> list[np.ndarray]:
    """Placements [N, C] of the paper's candidates."""
    return place_counts(loads, laer_counts(loads, n, c, g), n, c, g)


class Laer(Planner):
    name = "laer"

    def _plan(self, loads: np.ndarray) -> Plan:
        # 1. Candidates; 2. score each with the objective under the FSEP rule (expected even split); 3. keep the
        #    cheaper, and compute its exact integer routing summary.
        cands = laer_candidates(loads, self.n, self.c, self.g)
        if len(cands) == 1:
            return self.fsep_plan(loads, cands[0])
        objs = [est.objective for est in self.expected_scores(loads, cands)]
        return self.fsep_plan(loads, cands[int(np.argmin(objs))])
