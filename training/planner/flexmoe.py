"""FlexMoE's heuristic as the LAER-MoE authors re-implemented it: small replica moves from a static layout.

Notation: N devices, E experts, C slots per device, G devices per node, K nodes.
"""

from __future__ import annotations

import numpy as np

from training.placement import fsdp_ep_placement
from training.planner.base import Plan, Planner
from training.planner.bound import waterfill_replicas
from training.planner.lpt import PlacementRule, lpt_place


class FlexMoE(Planner):
    name = "flexmoe"

    def __init__(self, *args, max_moves: int = 10, **kw):
        super().__init__(*args, **kw)
        if max_moves < 0:
            raise ValueError(f"flexmoe: max_moves must be >= 0, got {max_moves}")
        self.max_moves = max_moves  # moves per node per plan

    def _plan(self, loads: np.ndarray) -> Plan:
        e = loads.shape[1]
        # 1. Start from the static FSDP+EP layout (FlexMoE adjusts an existing layout a little at a time).
        if e % self.c == 0:
            slots = fsdp_ep_placement(self.n, e, self.c).slots.copy()
        else:
            w = loads.sum(0)
            slots = lpt_place(w, waterfill_replicas(np.ones(e), self.n * self.c), self.n, self.c, self.g,
                              PlacementRule.FREE_NODES)
        obj, tokens = self.score(loads, slots)
        node_src = loads.reshape(self.k, self.g, e).sum(1)  # [K, E] tokens from each node's sources
        # 2. Per node: move one replica from the least-loaded local expert to the most-loaded one while the
        #    device max/min improves, at most max_moves times.
        for m in range(self.k):
            devs = np.arange(m * self.g, (m + 1) * self.g)
            for _ in range(self.max_moves):
                local = np.zeros(e, dtype=np.int64)
                np.add.at(local, slots[devs].ravel(), 1)
                r_all = np.bincount(slots.ravel(), minlength=e)
                per = np.where(local > 0, node_src[m] / np.maximum(local, 1), np.inf)
                hot = int(np.argmax(np.where(np.isfinite(per), per, -1) if np.isfinite(per).any() else per))
                # The donor must keep a replica somewhere else.
                donors = np.where((local > 0) & (r_all > 1) & (np.arange(e) != hot), per, np.inf)
                if not np.isfinite(donors).any():
                    break
                cold = int(np.argmin(donors))
                holders = devs[(slots[devs] == cold).any(1)]
                d = holders[np.argmin(tokens[holders])]
                c = int(np.flatnonzero(slots[d] == cold)[0])
                trial = slots.copy()
                trial[d, c] = hot
                t_obj, t_tokens = self.score(loads, trial)
                if _ratio(t_tokens) >= _ratio(tokens):
                    break
                slots, obj, tokens = trial, t_obj, t_tokens
        return self.fsep_plan(loads, slots, (obj, tokens))


def _ratio(tokens: np.ndarray) -> float:
    lo = tokens.min()
    return float(tokens.max() / lo) if lo > 0 else float("inf") if tokens.max() > 0 else 1.0
