"""LAER+ (ours, beyond the paper): the paper's objective, its plan among the candidates, better replica counts and
placement, and a choice made with what the runtime will see.

Notation: N devices, E experts, C slots per device, G devices per node, K nodes, W micro-batches in the planning
window, w [E] tokens per expert, w_m [E] tokens from node m's sources.

What it adds to `laer`, each kept only when the objective says it pays:
- replica counts by water-filling in steps of 1 (the paper's queue grows hot experts in steps of #nodes, and at
  C = 4 on 2 nodes leaves no slot for them), our placement rule (`PlacementRule.FREE_NODES`) on them and on the
  paper's counts, and a node-local layout water-filled per node on that node's sources;
- on small clusters the EPLB and FSDP+EP layouts as extra candidates and a swap/move local search;
- with `RoutingMode.QUOTAS`, a min-max flow routing (an LP) for the best layouts when it is small enough; the plan
  then carries explicit per-(source, expert, device) quotas (`fsep_routed=False`);
- on tiny clusters a local search scored by that flow LP, which brings it within ~2% of the exact MILP.

The choice: every candidate is scored on each micro-batch of the window it plans from, as the runtime will apply it:
the FSEP rule, or its quotas as fractions (`evaluate.quota_routing`) where the runtime follows quotas. The paper's
plan (`laer`'s pick) is candidate 0 and is kept unless another plan is cheaper than it on every micro-batch of the
window, by `window_margin` when the window has several (the next micro-batch is not among them: a plan that wins on
the window's sum but not on each of its micro-batches is likely to lose on the next one); among those, the lowest
mean over the window wins. A quota plan is used only where it beats the best FSEP-routed one by that rule.

The budget: steps beyond the paper's plan run only while their predicted cost fits in `time_budget_s`. Costs are
predicted from the instance's size (seconds per unit of work, measured below), not read from a clock, so the plan
depends only on the loads: ranks that plan the same loads make the same plan (`AsyncPlanner`).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from training.placement import Placement, fsdp_ep_placement
from training.planner.base import Estimate, Plan, Planner, RoutingMode
from training.planner.bound import waterfill_replicas
from training.planner.eplb import eplb_placement
from training.planner.evaluate import evaluate
from training.planner.laer import laer_counts, laer_pick, place_counts
from training.planner.lp import minmax_routing
from training.planner.lpt import PlacementRule, lpt_place
from training.routing import fsep_summaries

# Predicted CPU seconds of each step (thread time with numba on the 2-core x86-64 CI machine, fitted from N = 64 to
# 1024, E = 32 and 64, C = 1 to 16). cells = N*E + N*C, the work of scoring one layout on one micro-batch.
CALL_S = 20e-6  # one compiled call from Python, with its numpy set-up
FIXED_S = 200e-6  # a plan's own fixed cost: input checks, count vectors, the Plan
EXACT_S_PER_CELL = 20e-9  # exact FSEP score, per layout
EXPECTED_S_PER_CELL = 2e-9  # expected FSEP score, per layout ...
EXPECTED_S_PER_LOAD = 2.5e-9  # ... after a set-up per call over the N*E loads
FREE_S_PER_SLOT = 50e-9  # LPT placement with PlacementRule.FREE_NODES, per slot (N*C)
PAPER_S_PER_SLOT_DEVICE = 1.5e-9  # LPT placement with PlacementRule.PAPER, per slot and device (N*C*N) at worst
NODE_LOCAL_S_PER_NODE = 30e-6  # the node-local layout, per node
LP_FIXED_S = 1.5e-3  # one min-max flow LP (HiGHS): 1.6 ms at N*N*C = 32, 12 ms at 2048
LP_S_PER_VAR = 5e-6  # ... per bound on its variables (N*N*C)
QUOTA_APPLY_S = 2e-3  # applying quotas to one micro-batch (largest remainder over [N, E, N]) at N*N*C <= 2048
HEADROOM = 0.85  # the share of the budget planned for: predictions are fits, and the machine may be busy
# The default budget: the async planner plans step t + 1 while step t trains, one layer after another; a step of the
# paper's models (24-32 MoE layers, ~1.5-3 s) leaves ~50 ms per layer.
DEFAULT_BUDGET_S = 0.05


def node_local_placement(loads: np.ndarray, n: int, c: int, g: int) -> np.ndarray | None:
    """Every node holds every expert, with counts water-filled on its own sources' loads, so all dispatch stays inside
    the node. None when a node's G*C slots cannot hold E experts."""
    e = loads.shape[1]
    if g * c < e:
        return None
    k = n // g
    node_src = loads.reshape(k, g, e).sum(1)  # [K, E]
    slots = np.empty((n, c), dtype=np.int64)
    for m in range(k):
        r = waterfill_replicas(node_src[m], g * c)
        slots[m * g:(m + 1) * g] = lpt_place(node_src[m], r, g, c, g)  # one node: both rules agree
    return slots


class _Budget:
    """Predicted seconds left for optional steps; `take` spends them when the step's predicted cost fits."""

    def __init__(self, seconds: float):
        self.left = seconds

    def take(self, cost_s: float) -> bool:
        if cost_s > self.left:
            return False
        self.left -= cost_s
        return True


class LaerPlus(Planner):
    name = "laer_plus"

    def __init__(self, *args, routing: RoutingMode = RoutingMode.QUOTAS, time_budget_s: float = DEFAULT_BUDGET_S,
                 window_margin: float = 0.05, search_rounds: int = 2, search_max_slots: int = 128, flow_max_vars: int = 2048,
                 flow_search_max_vars: int = 256, flow_search_max_solves: int = 300, **kw):
        super().__init__(*args, **kw)
        if search_rounds < 0:
            raise ValueError(f"laer_plus: search_rounds must be >= 0, got {search_rounds}")
        if flow_max_vars < 0:
            raise ValueError(f"laer_plus: flow_max_vars must be >= 0, got {flow_max_vars}")
        if not time_budget_s >= 0:
            raise ValueError(f"laer_plus: time_budget_s must be >= 0, got {time_budget_s}")
        try:
            self.routing = RoutingMode(routing)  # how the runtime routes: FSEP rule only, or quotas where given
        except ValueError:
            raise ValueError(f"laer_plus: routing must be one of {[m.value for m in RoutingMode]}, got {routing!r}"
                             ) from None
        if not 0 <= window_margin < 1:
            raise ValueError(f"laer_plus: window_margin must be in [0, 1), got {window_margin}")
        self.time_budget_s = float(time_budget_s)  # predicted seconds for the steps beyond the paper's plan
        # Planning from a window of several micro-batches, a plan replaces the paper's only if it is cheaper by this
        # fraction on every one of them: the margin the next micro-batch may differ by without LAER+ losing to laer.
        self.window_margin = float(window_margin)
        self.search_rounds = search_rounds  # local-search improvement rounds after choosing a candidate
        # Each round scores 2*C^2 trial layouts at O(N*E + N*C) each: only worth it on small clusters. The baselines'
        # layouts join the candidates under the same limit.
        self.search_max_slots = search_max_slots  # local search (and baseline candidates) only when N*C <= this
        # Min-max flow routing is an LP with one variable per (source, expert, holder); above this many variables
        # (large clusters) the plan keeps the FSEP even split.
        self.flow_max_vars = flow_max_vars
        # Local search scored by the flow LP (one LP per trial): only on tiny clusters (N*N*C <= this).
        self.flow_search_max_vars = flow_search_max_vars
        self.flow_search_max_solves = flow_search_max_solves  # LP solves allowed in that search

    def _plan(self, loads: np.ndarray) -> Plan:
        return self._plan_window(loads[None])

    def _plan_window(self, window: np.ndarray) -> Plan:
        loads = window.sum(0)  # [N, E] what the candidates are built from
        n, c, g = self.n, self.c, self.g
        e = loads.shape[1]
        nw = window.shape[0]
        cells = n * e + n * c
        small = n * c <= self.search_max_slots
        exact_s = (EXACT_S_PER_CELL * cells + CALL_S) * nw  # one more layout in an exact window score
        expected_s = EXPECTED_S_PER_CELL * cells + 2e-6  # one more layout in the expected score of the summed loads
        expected_call_s = EXPECTED_S_PER_LOAD * n * e + CALL_S
        free_s = FREE_S_PER_SLOT * n * c + CALL_S
        paper_s = PAPER_S_PER_SLOT_DEVICE * n * c * n + CALL_S
        # The paper's plan always runs (two placements, their expected scores, one exact); the rest is for our steps.
        budget = _Budget(HEADROOM * self.time_budget_s - (FIXED_S + 2 * paper_s + expected_call_s + 2 * expected_s + exact_s))
        # 1. The paper's plan (`laer`'s candidates and pick) is candidate 0; its other candidate follows.
        paper_counts = laer_counts(loads, n, c, g)
        paper = place_counts(loads, paper_counts, n, c, g)
        pick, paper_est = laer_pick(self, loads, paper)
        cands = [paper[pick]] + [x for i, x in enumerate(paper) if i != pick]
        # 2. Our candidates, most useful first, while the budget affords building and scoring them.
        w = loads.sum(0)
        # (predicted cost of building them, builder), in the order they are worth adding.
        builders = [(free_s, lambda: place_counts(loads, [waterfill_replicas(w, n * c)], n, c, g,
                                                  PlacementRule.FREE_NODES)),
                    (2 * free_s, lambda: place_counts(loads, paper_counts, n, c, g, PlacementRule.FREE_NODES)),
                    (NODE_LOCAL_S_PER_NODE * self.k, lambda: [x for x in [node_local_placement(loads, n, c, g)]
                                                              if x is not None])]
        if small:  # on small clusters the baselines' layouts are cheap to add, so LAER+ is never worse than them
            builders.append((4 * free_s, lambda: [eplb_placement(loads, n, c, g)]))
            if e % c == 0:
                builders.append((CALL_S, lambda: [_fsdp_slots(n, e, c)]))
        n_paper = len(cands)
        for i, (cost_s, build) in enumerate(builders):
            # The first extra also pays for the call that scores the extras (expected split, summed loads).
            if budget.take(cost_s + expected_s + (expected_call_s if i == 0 else 0.0)):
                cands += build()
            else:
                break
        # 3. Rank by the expected objective of the summed loads (cheap: one call whatever the window). The exact
        #    objective on each micro-batch of the window goes to the paper's plan and, as the budget affords, to the
        #    others (all on small clusters, else the top two), best expected first; only to those the expected
        #    margin lets win.
        if len(cands) == n_paper and paper_est is not None:  # the paper's pick already scored them
            at_pick = [pick] + [i for i in range(n_paper) if i != pick]
            objs = np.array([paper_est[i].objective for i in at_pick])
            margins = np.array([paper_est[i].margin for i in at_pick])
            tokens = np.stack([paper_est[i].tokens for i in at_pick])
        elif len(cands) > 1:
            objs, tokens, margins = (np.asarray(x) for x in self.expected_arrays(loads, np.stack(cands)))
        else:
            objs, margins, tokens = np.zeros(1), np.zeros(1), None
        order = np.argsort(objs, kind="stable")
        others = [int(i) for i in (order if small else order[:2]) if i != 0]
        ceiling = objs[0] + margins[0]
        contenders = [0]
        for i in others:
            if objs[i] - margins[i] <= ceiling and budget.take(exact_s):
                contenders.append(i)
                ceiling = min(ceiling, objs[i] + margins[i])
        # The choice on the window: the lowest mean among the paper's plan and the contenders cheaper than it on each
        # of the window's micro-batches (by window_margin on a window of several, `_no_worse`).
        paper_mb = None  # [W] exact objective of the paper's plan on each micro-batch of the window
        if len(contenders) == 1 and nw == 1:  # the paper's plan alone: its exact score comes with the Plan
            win, slots, best_obj, score = 0, cands[0], None, None
        else:
            per_mb, exact_tokens = self._exact_window(window, [cands[i] for i in contenders])  # [W, T]
            paper_mb = per_mb[:, 0]
            ok = self._no_worse(per_mb, paper_mb)
            ok[0] = True
            mean = np.where(ok, per_mb.mean(0), np.inf)
            at = int(np.argmin(mean))  # the first minimum: the paper's plan on ties
            win = contenders[at]
            slots, best_obj = cands[win], float(mean[at])
            score = (best_obj, exact_tokens[at]) if nw == 1 else None
        ranked = [cands[i] for i in dict.fromkeys([win, 0, *order[:2].tolist()])]
        # 4. Local search on the winner (expected split on the summed loads): swaps and replica moves between the
        #    busiest and the idlest device; kept if it is chosen over the winner by the same rule.
        searched = slots
        round_s = EXPECTED_S_PER_LOAD * n * e + EXPECTED_S_PER_CELL * cells * (1 + 2 * c * c) + CALL_S
        if small and self.search_rounds and budget.take(round_s + exact_s):
            est = (Estimate(objs[win], tokens[win], margins[win]) if tokens is not None
                   else self.expected_score(loads, slots))
            for r in range(self.search_rounds):
                if r and not budget.take(round_s):
                    break
                step = self._best_step(loads, searched, est.objective, est.tokens)
                if step is None:
                    break
                searched, est = step
        if searched is not slots:
            if paper_mb is None:
                paper_mb = self._exact_window(window, [slots])[0][:, 0]
                best_obj = float(paper_mb.mean())
            s_mb, s_tokens = self._exact_window(window, [searched])
            if self._no_worse(s_mb, paper_mb)[0] and s_mb[:, 0].mean() < best_obj:
                slots, best_obj = searched, float(s_mb[:, 0].mean())
                score = (best_obj, s_tokens[0]) if nw == 1 else None
                ranked.insert(0, searched)
        best = self.fsep_plan(loads, slots, score)
        if self.routing is not RoutingMode.QUOTAS:
            return best
        if paper_mb is None:  # a window of one micro-batch, the paper's plan chosen: the plan's own objective
            paper_mb = np.array([best.est_time_s])
            best_obj = best.est_time_s
        # 5. Min-max flow quotas on the top layouts, used only where they beat the FSEP rule on the window.
        lp_s = LP_FIXED_S + LP_S_PER_VAR * n * n * c + (QUOTA_APPLY_S * nw if nw > 1 else 0.0)
        quota, quota_obj = None, best_obj
        if n * c * n <= self.flow_max_vars:  # upper bound on (source, holder) pairs per expert
            for s_ in {id(x): x for x in ranked}.values():
                if not budget.take(lp_s):
                    break
                p = self._quota_plan(loads, s_)
                if p is not None and (obj := self._quota_choice(window, p, paper_mb)) < quota_obj:
                    quota, quota_obj = p, obj
        # 6. Tiny clusters: local search scored with the flow routing itself (first improvement, bounded LP solves).
        if n * c * n <= self.flow_search_max_vars:
            lp1_s = LP_FIXED_S + LP_S_PER_VAR * n * n * c
            start = quota or (self._quota_plan(loads, slots) if budget.take(lp1_s) else None)
            if start is not None:
                found = self._flow_search(loads, start, budget, lp1_s)
                if found is not start and (obj := self._quota_choice(window, found, paper_mb)) < quota_obj:
                    quota, quota_obj = found, obj
                elif quota is None and (obj := self._quota_choice(window, start, paper_mb)) < quota_obj:
                    quota, quota_obj = start, obj
        return quota if quota is not None else best

    # Scoring on the window ------------------------------------------------------------------------------------------
    def _exact_window(self, window: np.ndarray, layouts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """[W, T] exact objective of each layout under the FSEP rule on each micro-batch of the window, and the
        device tokens [T, N] on the last micro-batch (on a window of one: the plan's)."""
        stack = np.stack(layouts)
        per_mb = np.empty((len(window), len(layouts)))
        for w, x in enumerate(window):
            traffic = fsep_summaries(x, stack, self.g)
            per_mb[w] = self.objective.objectives(*traffic)
        return per_mb, traffic.device_tokens

    def _no_worse(self, per_mb: np.ndarray, paper_mb: np.ndarray) -> np.ndarray:
        """[T] whether each plan's objective [W, T] is no worse than the paper's plan's [W] on every micro-batch:
        on a window of several, better by `window_margin` on each (the next micro-batch is not in the window)."""
        factor = 1 + 1e-12 if len(paper_mb) == 1 else 1 - self.window_margin
        return np.all(per_mb <= paper_mb[:, None] * factor, axis=0)

    def _quota_choice(self, window: np.ndarray, plan: Plan, paper_mb: np.ndarray) -> float:
        """The window mean of a quota plan's objective applied as the runtime does (fractions per (source, expert);
        on a window of one micro-batch, the plan's own objective), or inf when it is worse than the paper's plan on
        some micro-batch of the window."""
        per_mb = (np.array([plan.est_time_s]) if len(window) == 1
                  else np.array([evaluate(plan, x, self.g, self.objective)[1] for x in window]))
        return float(per_mb.mean()) if self._no_worse(per_mb[:, None], paper_mb)[0] else float("inf")

    def _quota_plan(self, loads: np.ndarray, slots: np.ndarray) -> Plan | None:
        routing = minmax_routing(loads, Placement(slots, loads.shape[1]).holders(), self.g, self.objective)
        return None if routing is None else self.routed_plan(loads, slots, routing)

    # Local searches -------------------------------------------------------------------------------------------------
    def _flow_search(self, loads: np.ndarray, best: Plan, budget: _Budget, lp_s: float) -> Plan:
        e = loads.shape[1]
        slots = best.layout.slots.copy()
        solves = 0
        improved = True
        while improved and solves < self.flow_search_max_solves:
            improved = False
            counts = np.bincount(slots.ravel(), minlength=e)
            for hi, lo, a, b in _pairs(best.device_tokens, self.c):
                x, y = int(slots[hi, a]), int(slots[lo, b])
                if x == y:
                    continue
                for swap in (True, False):
                    if not swap and counts[y] < 2:
                        continue  # y would lose its last replica
                    trial = slots.copy()
                    trial[lo, b] = x
                    if swap:
                        trial[hi, a] = y
                    if any(np.array_equal(np.sort(trial[d]), np.sort(slots[d])) for d in (hi, lo)) and swap:
                        continue
                    if not budget.take(lp_s):
                        return best
                    p = self._quota_plan(loads, trial)
                    solves += 1
                    if p is not None and p.est_time_s < best.est_time_s * (1 - 1e-9):
                        best, slots, improved = p, trial, True
                        break
                    if solves >= self.flow_search_max_solves:
                        return best
                if improved:
                    break
        return best

    def _best_step(self, loads, slots, obj, tokens):
        """The best objective-lowering change touching the busiest and the idlest device, or None."""
        e = loads.shape[1]
        hi, lo = int(np.argmax(tokens)), int(np.argmin(tokens))
        if hi == lo:
            return None
        counts = np.bincount(slots.ravel(), minlength=e)
        # trials[0] is the current layout, trials[1:t] the changed copies.
        trials = np.empty((1 + 2 * self.c * self.c, *slots.shape), dtype=np.int64)
        trials[:] = slots
        t = 1
        tried = set()
        for a in range(self.c):
            for b in range(self.c):
                x, y = int(slots[hi, a]), int(slots[lo, b])
                # Swap x and y between the two devices; or move: y's slot takes a copy of x (needs y elsewhere).
                moves = [("swap", x, y)] if x != y else []
                if counts[y] > 1 and x != y:
                    moves.append(("copy", x, y))
                for kind, x_, y_ in moves:
                    if (kind, a if kind == "swap" else -1, b, x_, y_) in tried:
                        continue
                    tried.add((kind, a if kind == "swap" else -1, b, x_, y_))
                    trials[t, lo, b] = x_
                    if kind == "swap":
                        trials[t, hi, a] = y_
                    t += 1
        if t == 1:
            return None
        # All trials scored in one call, behind the current layout (the kernel reuses its sums for the nodes a trial
        # leaves alone); the first strictly best trial wins, as when scoring them one by one.
        objs, dev_tokens, margins = self.expected_arrays(loads, trials[:t])
        best = None
        for i in range(1, t):
            if objs[i] < obj * (1 - 1e-12) and (best is None or objs[i] < objs[best]):
                best = i
        return None if best is None else (trials[best], Estimate(objs[best], dev_tokens[best], margins[best]))


@cache
def _fsdp_slots(n: int, e: int, c: int) -> np.ndarray:
    """The FSDP+EP layout [N, C] (read-only): the same for every plan of a planner, so built once."""
    return fsdp_ep_placement(n, e, c).slots


def _pairs(tokens: np.ndarray, c: int):
    """(busier device, idler device, slot a, slot b) for every ordered device pair, busiest-vs-idlest first."""
    order = np.argsort(-tokens, kind="stable")
    for hi in order:
        for lo in order[::-1]:
            if lo == hi:
                continue
            for a in range(c):
                for b in range(c):
                    yield int(hi), int(lo), a, b
