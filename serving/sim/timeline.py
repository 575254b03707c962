"""Discrete-event simulation of a deployment that may change while it serves (a fixed deployment: no changes).

The loop walks arrivals in time order, with two more kinds of event between them:
  decision  at each time in `decide_at`, every engine is advanced to it, the callback sees what is in flight on the
            current replicas and may return a DeploymentChange, applied at once:
              1. each target replica either continues a current one (`keep`) or is a new engine that starts no
                 iteration before `ready_s` (its weights are loading);
              2. current replicas no target continues are removed: they take no new request and drain what they
                 hold, except the requests named in `moves`;
              3. each moved request leaves its source now and continues on its target replica from its KV (its
                 context, not a restart) once the KV has arrived;
              4. the target replicas and the change's dispatcher route every later arrival.
  KV arrival  a moved request joins its target engine (advanced to that time first).
Before routing an arrival at t, the replicas it may depend on are advanced to t (all current ones for a dynamic
dispatcher, only the target for a static one, whose routes are fixed up front); a dynamic dispatcher sees a replica
that is not ready yet as loaded by the wait (so ready replicas go first). After the last arrival every engine drains.
Every request completes exactly once (asserted): nothing is lost in a drain or a move, nothing is answered twice.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from serving.costmodel.iteration import IterationCost
from serving.sim.dispatcher import ROUTERS, Dispatcher
from serving.sim.metrics import SLO, summarize
from serving.sim.replica import EngineConfig, Requests, make_replica

DEFAULT_ENGINE = EngineConfig()
DEFAULT_SLO = SLO()
# A not-ready replica looks this many outstanding tokens (or requests) heavier per second of wait to a dynamic router:
# any ready replica of the type's affinity set wins over it, and among not-ready ones the earliest ready wins.
WAIT_PENALTY_PER_S = 1e9


@dataclass(frozen=True)
class Inflight:
    """A dispatched, unfinished request on a current replica, as a decision callback sees it."""

    id: int  # request index in the trace
    replica: int  # index of its replica among the current ones (the current plan's order)
    context_tokens: int  # KV tokens it holds now (0 while it waits in a queue)
    remaining_tokens: int  # output tokens it still owes


@dataclass(frozen=True)
class KVMove:
    request: int  # request index
    dst: int  # target replica index (in DeploymentChange.costs)
    ready_s: float  # seconds after the change when its KV is on dst and it may continue there
    keep_kv: bool = True  # False: its KV is dropped and it recomputes on dst (a restarted engine loses it)


@dataclass(frozen=True)
class DeploymentChange:
    """What a decision asks of the simulator (serving/sim/closedloop.py builds one from a switch plan)."""

    costs: tuple[IterationCost, ...]  # [K'] the target replicas' iteration costs
    keep: tuple[int | None, ...]  # [K'] current replica index each target continues, or None: a new engine
    ready_s: tuple[float, ...]  # [K'] seconds after the change when each can serve (a kept one: 0)
    weights: np.ndarray | None = None  # [K', J] x_kj for a dispatcher that follows the plan
    moves: tuple[KVMove, ...] = ()  # in-flight requests whose KV moves; the rest on removed replicas drain there
    dispatch: Dispatcher | None = None  # how later arrivals are routed (None: as before)
    label: str = ""  # what the change is, for the log


@dataclass(frozen=True)
class AppliedChange:
    time_s: float  # when it was applied
    label: str
    kept: int  # target replicas that continued a current one
    built: int  # target replicas built anew
    drained: int  # requests left to finish on removed replicas
    moved: int  # requests whose KV moved
    engines: tuple[int, ...]  # [K'] engine index (SimResult.replica's numbering) of each target replica


@dataclass(frozen=True)
class SimResult:
    arrival_s: np.ndarray  # [R]
    first_token_s: np.ndarray  # [R] when the first output token was produced
    finish_s: np.ndarray  # [R] when the last output token was produced
    replica: np.ndarray  # [R] which engine finished it (engines numbered in order of creation)
    preemptions: np.ndarray  # [R] times it was preempted
    completions: np.ndarray  # [R] times it completed (1 for every request)
    peak_kv_blocks: tuple[int, ...]  # [E] most KV blocks each engine held at once
    kv_blocks: tuple[int, ...]  # [E] KV blocks each engine has
    iterations: tuple[int, ...]  # [E] iterations run per engine
    summary: dict  # p50/p99 latencies, throughput, SLO attainment
    # Per-request trace for debugging: [R] when its prompt was first scheduled (queue = scheduled - arrival,
    # prefill = first_token - scheduled, decode = finish - first_token) and seconds it spent preempted.
    scheduled_s: np.ndarray | None = None
    preempted_s: np.ndarray | None = None
    changes: tuple[AppliedChange, ...] = ()  # the deployment changes applied, in time order
    moved: np.ndarray | None = None  # [R] times each request's KV moved to another engine


# (decision time, what is in flight on the current replicas) -> a change, or None to keep the deployment.
DecideFn = Callable[[float, tuple[Inflight, ...]], "DeploymentChange | None"]


class _Waiting:
    """A not-ready engine as a dynamic router sees it: as loaded as its wait."""

    def __init__(self, engine, wait_s: float):
        self.outstanding = engine.outstanding + WAIT_PENALTY_PER_S * wait_s
        self.outstanding_tokens = engine.outstanding_tokens + WAIT_PENALTY_PER_S * wait_s


def simulate_timeline(
    arrival_s, input_tokens, output_tokens, labels, costs: Sequence[IterationCost],
    dispatch: Dispatcher = Dispatcher.plan, weights=None, engine: EngineConfig = DEFAULT_ENGINE,
    max_model_len: int = 8192, slo: SLO = DEFAULT_SLO, decide_at: Sequence[float] = (), decide: DecideFn | None = None,
) -> SimResult:
    """Serve the requests on replicas with the given iteration costs, changing the deployment where `decide` says.

    dispatch: a registered Dispatcher (plan and affinity need weights [K, J] = x_kj).
    Requests longer than max_model_len have their prompt cut to fit (as the serving front end would).
    """
    if dispatch not in ROUTERS:
        raise ValueError(f"simulate: unknown dispatcher {dispatch!r}; known: {[d.name for d in ROUTERS]}")
    if not costs:
        raise ValueError("simulate: the deployment has no replicas")
    if len(decide_at) and decide is None:
        raise ValueError("simulate: decide_at given without a decide callback")
    inp = np.asarray(input_tokens, np.int64)
    out = np.maximum(np.asarray(output_tokens, np.int64), 1)
    out = np.minimum(out, max_model_len - 1)
    inp = np.clip(np.minimum(inp, max_model_len - out), 1, None)
    arrival = np.asarray(arrival_s, float)
    if np.any(np.diff(arrival) < 0):
        raise ValueError("simulate: arrivals must be in time order")
    reqs = Requests(arrival, inp, out)
    labels = np.asarray(labels, np.int64)
    engines = [make_replica(k, c, reqs, engine, max_model_len) for k, c in enumerate(costs)]
    stage = _Stage(list(range(len(engines))), np.zeros(len(engines)),
                   ROUTERS[dispatch](labels, len(engines), weights), dispatch, weights)
    decisions = sorted(float(t) for t in decide_at)
    arrivals_kv: list[tuple[float, int, int, tuple[int, int, int]]] = []  # heap (ready, request, engine, state)
    moved = np.zeros(len(arrival), np.int64)
    applied: list[AppliedChange] = []

    def land_kv(until: float) -> None:
        while arrivals_kv and arrivals_kv[0][0] <= until:
            t_ready, rid, e, state = heapq.heappop(arrivals_kv)
            engines[e].advance_until(t_ready)
            engines[e].adopt(rid, *state, t_ready)

    def apply(t: float, ch: DeploymentChange) -> None:
        n = len(ch.costs)
        if not n or len(ch.keep) != n or len(ch.ready_s) != n:
            raise ValueError(f"DeploymentChange at {t:g}s: costs, keep, ready_s must have one entry per target "
                             f"replica (>= 1), got {n}, {len(ch.keep)}, {len(ch.ready_s)}")
        kept = [k for k in ch.keep if k is not None]
        if len(set(kept)) != len(kept) or any(not 0 <= k < len(stage.engines) for k in kept):
            raise ValueError(f"DeploymentChange at {t:g}s: keep {ch.keep} must name distinct current replicas "
                             f"(0..{len(stage.engines) - 1})")
        new_ids, ready = [], np.zeros(n)
        for k, (c, keep, r) in enumerate(zip(ch.costs, ch.keep, ch.ready_s)):
            if keep is not None:
                new_ids.append(stage.engines[keep])
                ready[k] = stage.ready[keep]
                continue
            e = make_replica(len(engines), c, reqs, engine, max_model_len)
            e.start_at(t + float(r))
            engines.append(e)
            new_ids.append(len(engines) - 1)
            ready[k] = t + float(r)
        for m in ch.moves:  # Step 3: out of its source now, into the target when its KV arrives
            src = int(reqs.replica[m.request])
            state = engines[src].release(m.request) if src >= 0 else None
            if state is None:
                continue  # it finished before the change: nothing to move
            moved[m.request] += 1
            if not m.keep_kv:
                state = (0, 0, state[2])
            # Not before the source's last iteration ends: the tokens it computed there move too.
            t_ready = max(t + float(m.ready_s), _clock(engines[src]))
            heapq.heappush(arrivals_kv, (t_ready, int(m.request), new_ids[m.dst], state))
        removed = set(stage.engines) - set(new_ids)
        drained = sum(engines[e].outstanding for e in removed)
        d = ch.dispatch or stage.dispatch
        stage.__init__(new_ids, ready, ROUTERS[d](labels, n, ch.weights), d, ch.weights)
        applied.append(AppliedChange(t, ch.label, len(kept), n - len(kept), drained, len(ch.moves), tuple(new_ids)))

    pending = list(reversed(decisions))

    def decide_until(until: float) -> None:
        while pending and pending[-1] <= until:
            td = pending.pop()
            land_kv(td)
            for e in engines:
                e.advance_until(td)
            ch = decide(td, stage.inflight(engines))
            if ch is not None:
                apply(td, ch)

    for i in range(len(arrival)):
        t = arrival[i]
        decide_until(t)
        land_kv(t)
        view = [engines[e] for e in stage.engines]
        if stage.router.reads_state:
            for e in view:
                e.advance_until(t)
            if np.any(stage.ready > t):
                view = [v if r <= t else _Waiting(v, r - t) for v, r in zip(view, stage.ready)]
            k = stage.router.route(i, view)
        else:
            k = stage.router.route(i, view)
            engines[stage.engines[k]].advance_until(t)
        engines[stage.engines[k]].enqueue(i, t)
    decide_until(float("inf"))  # decisions after the last arrival still act on what is in flight
    land_kv(float("inf"))
    for e in engines:
        e.advance_until(float("inf"))

    if np.any(reqs.completions != 1):
        bad = np.flatnonzero(reqs.completions != 1)
        raise AssertionError(f"simulate: {bad.size} requests completed {reqs.completions[bad[:5]]} times")
    return SimResult(
        arrival_s=arrival, first_token_s=reqs.first_token, finish_s=reqs.finish, replica=reqs.replica,
        preemptions=reqs.preemptions, completions=reqs.completions,
        peak_kv_blocks=tuple(e.peak_blocks for e in engines), kv_blocks=tuple(e.num_blocks for e in engines),
        iterations=tuple(e.iterations for e in engines),
        summary=summarize(arrival, reqs.first_token, reqs.finish, out, slo),
        scheduled_s=reqs.scheduled, preempted_s=reqs.preempted_s, changes=tuple(applied), moved=moved,
    )


class _Stage:
    """The current replicas: engine index, absolute ready time, router of each (mutable loop state)."""

    def __init__(self, engines: list[int], ready: np.ndarray, router, dispatch: Dispatcher, weights):
        self.engines, self.ready, self.router, self.dispatch, self.weights = engines, ready, router, dispatch, weights

    def inflight(self, engines) -> tuple[Inflight, ...]:
        return tuple(Inflight(rid, k, ctx, rem) for k, e in enumerate(self.engines) for rid, ctx, rem in engines[e].held())


def _clock(engine) -> float:
    """When an engine's current iteration ends (its slots' latest, for a pipelined replica)."""
    return max(s.t for s in engine.slots) if hasattr(engine, "slots") else engine.t
