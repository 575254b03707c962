"""The exact planner: the MILP of training.planner.lp solved by HiGHS under a time limit; the oracle for small cases."""

from __future__ import annotations

import numpy as np

from training.planner.base import Plan, Planner
from training.planner.laer_plus import LaerPlus
from training.planner.lp import solve_placement


class MILP(Planner):
    name = "milp"

    def __init__(self, *args, time_limit_s: float = 10.0, **kw):
        super().__init__(*args, **kw)
        if not time_limit_s > 0:
            raise ValueError(f"milp: time_limit_s must be > 0, got {time_limit_s}")
        self.time_limit_s = time_limit_s  # HiGHS wall-clock limit per plan

    def _plan(self, loads: np.ndarray) -> Plan:
        res = solve_placement(loads, self.c, self.g, self.objective, self.time_limit_s)
        if res.slots is None:
            # No integer point within the limit: fall back to the best heuristic and say so with an infinite gap.
            p = LaerPlus(self.n, self.c, self.g, objective=self.objective).plan(loads)
            return Plan(p.layout, p.device_tokens, p.est_time_s, self.name, float("inf"), p.fsep_routed,
                        routing_fn=p.routing_fn)
        return self.routed_plan(loads, res.slots, res.routing, gap=res.gap)
