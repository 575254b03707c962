"""FlexMoE's heuristic as the LAER-MoE authors re-implemented it (Galvatron's `MoEOptimizer.flexmoe_method`).

The layout persists: each plan starts from the layout the previous one left (the runtime passes its current placement
to the solver every iteration) and moves a few replicas, so over many steps the layout drifts towards balance. One
plan is at most `max_moves` rounds of FlexMoE's MakeSchedulingPlan; a round moves one replica per node, all nodes the
same pair: the expert with the most tokens per replica gains a replica in every node and the one with the fewest
(among those with more replicas than nodes, so every node may keep one) loses one. A round is kept while it lowers
the busiest device's tokens or the busiest / idlest ratio; the first round that does neither ends the plan.

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

    def __init__(self, *args, max_moves: int = 10, start=None, **kw):
        """max_moves: rounds per plan (one replica move per node each). start: the layout [N, C] every plan starts
        from (the layout the run has now; one planner per layer where layers differ, as `training.sim.
        simulate_iteration` builds from per-layer options); default the static FSDP+EP layout."""
        super().__init__(*args, **kw)
        if max_moves < 0:
            raise ValueError(f"flexmoe: max_moves must be >= 0, got {max_moves}")
        self.max_moves = max_moves
        self.start = None if start is None else _check_start(start, self.n, self.c)

    def _plan(self, loads: np.ndarray) -> Plan:
        return self.step(loads, self.static_layout(loads.shape[1]) if self.start is None else self.start)

    def step(self, loads: np.ndarray, slots: np.ndarray) -> Plan:
        """One plan: at most max_moves rounds from the layout slots [N, C] (holding every expert) on loads [N, E]."""
        loads = np.asarray(loads, dtype=np.int64)
        slots = _check_layout(slots, self.n, self.c, loads.shape[1])
        obj, tokens = self.score(loads, slots)
        totals = loads.sum(0)
        for _ in range(self.max_moves):
            if _ratio(tokens) <= 1.0:
                break
            trial = self._round(totals, slots, tokens)
            if trial is None:
                break
            t_obj, t_tokens = self.score(loads, trial)
            if not (t_tokens.max() < tokens.max() or _ratio(t_tokens) < _ratio(tokens)):
                break
            slots, obj, tokens = trial, t_obj, t_tokens
        return self.fsep_plan(loads, slots, (obj, tokens))

    def static_layout(self, e: int) -> np.ndarray:
        """The layout [N, C] a run starts from: FSDP+EP's."""
        if e % self.c == 0:
            return fsdp_ep_placement(self.n, e, self.c).slots.copy()
        # No FSDP+EP layout exists when C does not divide E: the replicas spread as evenly as the slots allow.
        return lpt_place(np.ones(e), waterfill_replicas(np.ones(e), self.n * self.c), self.n, self.c, self.g,
                         PlacementRule.FREE_NODES)

    def _round(self, totals: np.ndarray, slots: np.ndarray, tokens: np.ndarray) -> np.ndarray | None:
        """One MakeSchedulingPlan round on slots, or None when no pair of experts can trade a replica."""
        e = totals.size
        reps = np.bincount(slots.ravel(), minlength=e)
        per = totals // reps  # tokens per replica, floored as the authors' solver does
        order = np.argsort(-per, kind="stable")  # ties: lower expert id first
        hot = int(order[0])
        # The donor keeps one replica per node, so it must hold more than K.
        spare = order[reps[order] > self.k]
        if not spare.size or int(spare[-1]) == hot:
            return None
        cold = int(spare[-1])
        new = slots.copy()
        for m in range(self.k):
            devs = np.arange(m * self.g, (m + 1) * self.g)
            held = new[devs]
            donors = devs[(held == cold).any(1)]
            if not donors.size:  # the authors' solver assumes a copy in every node; here the node just sits out
                continue
            dst = int(donors[np.argmin(tokens[donors])])  # the idlest device holding the donor
            n_hot = (held == hot).sum(1)
            growers = devs[(n_hot > 0) & (n_hot < self.c)]
            if not growers.size or int(growers[0]) == dst:
                # No device of the node can take a second copy: the hot expert takes the donor's slot on dst.
                _swap(new, dst, cold, hot)
                continue
            # The hot expert grows where it already is (its weights stay put); that device's next-busiest expert
            # moves to dst, into the donor's slot.
            src = int(growers[0])
            others = np.unique(new[src][new[src] != hot])
            moved = int(others[np.argmax(per[others])])
            _swap(new, src, moved, hot)
            _swap(new, dst, cold, moved)
        return new


def _swap(slots: np.ndarray, device: int, old: int, new: int) -> None:
    c = int(np.flatnonzero(slots[device] == old)[0])
    slots[device, c] = new


def _check_start(start, n: int, c: int) -> np.ndarray:
    s = np.asarray(start)
    if s.shape != (n, c) or s.dtype.kind not in "iu":
        raise ValueError(f"flexmoe: start must be an integer layout [N={n}, C={c}], got shape {list(s.shape)} "
                         f"dtype {s.dtype}")
    return s.astype(np.int64)


def _check_layout(slots, n: int, c: int, e: int) -> np.ndarray:
    s = np.asarray(slots)
    if s.shape != (n, c) or s.dtype.kind not in "iu" or s.min() < 0 or s.max() >= e:
        raise ValueError(f"flexmoe: a start layout must be [N={n}, C={c}] of expert ids < E={e}, got shape "
                         f"{list(s.shape)}")
    if np.bincount(s.ravel(), minlength=e).min() == 0:
        raise ValueError(f"flexmoe: a start layout must hold every one of the E={e} experts")
    return s.astype(np.int64)


def _ratio(tokens: np.ndarray) -> float:
    lo = tokens.min()
    return float(tokens.max() / lo) if lo > 0 else float("inf") if tokens.max() > 0 else 1.0
