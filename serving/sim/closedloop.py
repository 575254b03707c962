"""The closed loop in the simulator: at every interval a policy (serving.control: the controller, or the migration
baseline) sees the observed per-interval type rates and what is in flight, and the simulator carries out its
decision (serving/sim/timeline.py). The policy never imports this; this module only reads its decisions' fields.

Notation: T intervals of `interval_s` seconds, J types; series [T, J] the observed rates (req/s) per interval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from serving.costmodel.iteration import IterationCost, ReplicaConfig
from serving.sim.dispatcher import Dispatcher
from serving.sim.metrics import SLO
from serving.sim.replica import EngineConfig
from serving.sim.timeline import DeploymentChange, Inflight, KVMove, SimResult, simulate_timeline

# (time, history [b, J] of the intervals before it, plan in force, in-flight requests) -> a decision (a
# serving.control Decision or Migration) or None.
Policy = Callable[[float, np.ndarray, object, tuple[Inflight, ...]], object]


@dataclass(frozen=True)
class ClosedLoopResult:
    sim: SimResult
    decisions: tuple  # every decision the policy returned, in time order
    plans: tuple  # (time_s, DeploymentPlan) the plan in force from each time on (the first from 0)


def change_for(decision, current, cost: Callable[[ReplicaConfig], IterationCost], labels: np.ndarray,
               inflight: tuple[Inflight, ...], dispatch: Dispatcher) -> tuple[DeploymentChange | None, object]:
    """The simulator's change for one decision, and the plan in force after it.

    A switch: target replicas the switch plan keeps continue the current replica on the same devices with the same
    config; the others start at their ready time; KV moves as planned (a reload, which keeps nothing, restarts
    every in-flight request on the target replica with the largest share of its type: its KV is lost with the old
    engines). No switch: the deployment stays, its dispatch re-solved on the forecast. A migration: the moves."""
    if hasattr(decision, "moves"):  # a Migration
        if not decision.moves:
            return None, current
        moves = tuple(KVMove(m.request, m.dst, m.ready_s) for m in decision.moves)
        n = len(current.replicas)
        return DeploymentChange(tuple(cost(c) for c in current.replicas), tuple(range(n)), (0.0,) * n,
                                np.array(current.dispatch), moves, dispatch, "migrate"), current
    if not decision.switch:
        plan = decision.current
        if plan is current:  # nothing to change (no re-dispatch)
            return None, current
        n = len(plan.replicas)
        return DeploymentChange(tuple(cost(c) for c in plan.replicas), tuple(range(n)), (0.0,) * n,
                                np.array(plan.dispatch), (), dispatch, "redispatch"), plan
    sp = decision.switch_plan
    target = sp.target
    where = {(d, c): i for i, (d, c) in enumerate(zip(current.devices, current.replicas))}
    keep = []
    for k, (d, c) in enumerate(zip(target.devices, target.replicas)):
        if k in sp.kept:
            if (d, c) not in where:
                raise ValueError(f"switch plan keeps target replica {k} ({c} on {d}), which is not in place")
            keep.append(where[(d, c)])  # the current replica on the same devices with the same config
        else:
            keep.append(None)
    ready = tuple(0.0 if k in sp.kept else float(r) for k, r in enumerate(sp.replica_ready_s))
    moves = [KVMove(a.request, a.dst_replica, float(a.ready_s)) for a in sp.kv if a.move]
    if not sp.kept and not sp.kv:  # a cold reload: every in-flight request restarts on the new deployment
        share = np.array(target.dispatch)  # [K', J]
        for r in inflight:
            moves.append(KVMove(r.id, int(np.argmax(share[:, labels[r.id]])), 0.0, keep_kv=False))
    label = f"switch to {target.describe()}"
    return DeploymentChange(tuple(cost(c) for c in target.replicas), tuple(keep), ready, np.array(target.dispatch),
                            tuple(moves), dispatch, label), target


def run_closed_loop(
    arrival_s, input_tokens, output_tokens, labels, series: np.ndarray, interval_s: float, initial,
    cost: Callable[[ReplicaConfig], IterationCost], policy: Policy | None, dispatch: Dispatcher = Dispatcher.affinity,
    engine: EngineConfig | None = None, max_model_len: int = 8192, slo: SLO | None = None, start: int = 1,
) -> ClosedLoopResult:
    """Serve the trace from the `initial` plan; at the start of every interval b in [start, T) ask the policy.

    series [T, J]: the observed per-interval rates (common.stats.type_rates); the policy at interval b sees
    series[:b] only. policy None: the initial plan serves throughout (the fixed deployment)."""
    if not interval_s > 0:
        raise ValueError(f"run_closed_loop: interval_s must be > 0, got {interval_s!r}")
    labels = np.asarray(labels, np.int64)
    series = np.asarray(series, float)
    state = {"plan": initial}
    decisions, plans = [], [(0.0, initial)]

    def decide(t: float, inflight: tuple[Inflight, ...]):
        b = int(round(t / interval_s))
        d = policy(t, series[:b], state["plan"], inflight)
        if d is None:
            return None
        decisions.append(d)
        ch, plan = change_for(d, state["plan"], cost, labels, inflight, dispatch)
        if plan is not state["plan"] and getattr(d, "switch", False):
            plans.append((t, plan))
        state["plan"] = plan
        return ch

    times = [b * interval_s for b in range(max(start, 1), len(series))] if policy is not None else []
    sim = simulate_timeline(arrival_s, input_tokens, output_tokens, labels, [cost(c) for c in initial.replicas],
                            dispatch, np.array(initial.dispatch), engine or EngineConfig(), max_model_len,
                            slo or SLO(), decide_at=times, decide=decide if times else None)
    return ClosedLoopResult(sim, tuple(decisions), tuple(plans))
