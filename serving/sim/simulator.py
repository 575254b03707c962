"""Discrete-event simulation of a deployment serving a request trace.

The loop walks arrivals in time order. Before routing an arrival at time t, the replicas it may depend on are advanced
to t (all of them for a dynamic dispatcher, only the target for a static one, whose routes are fixed up front);
each replica advances in iteration steps (replica.py). After the last arrival every replica drains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.costmodel.iteration import IterationCost
from serving.sim.dispatcher import ROUTERS, Dispatcher
from serving.sim.metrics import SLO, summarize
from serving.sim.replica import EngineConfig, Requests, make_replica

DEFAULT_ENGINE = EngineConfig()
DEFAULT_SLO = SLO()


@dataclass(frozen=True)
class SimResult:
    arrival_s: np.ndarray  # [R]
    first_token_s: np.ndarray  # [R] when the first output token was produced
    finish_s: np.ndarray  # [R] when the last output token was produced
    replica: np.ndarray  # [R] which replica served it
    preemptions: np.ndarray  # [R] times it was preempted
    completions: np.ndarray  # [R] times it completed (1 for every request)
    peak_kv_blocks: tuple[int, ...]  # [K] most KV blocks any replica held at once
    kv_blocks: tuple[int, ...]  # [K] KV blocks each replica has
    iterations: tuple[int, ...]  # [K] iterations run per replica
    summary: dict  # p50/p99 latencies, throughput, SLO attainment
    # Per-request trace for debugging: [R] when its prompt was first scheduled (queue = scheduled - arrival,
    # prefill = first_token - scheduled, decode = finish - first_token) and seconds it spent preempted.
    scheduled_s: np.ndarray | None = None
    preempted_s: np.ndarray | None = None


def simulate(
    arrival_s, input_tokens, output_tokens, labels, costs: list[IterationCost], dispatch: Dispatcher = Dispatcher.plan,
    weights=None, engine: EngineConfig = DEFAULT_ENGINE, max_model_len: int = 8192, slo: SLO = DEFAULT_SLO,
) -> SimResult:
    """Serve the requests on replicas with the given iteration costs.

    dispatch: a registered Dispatcher (plan needs weights [K, J] = x_kj).
    Requests longer than max_model_len have their prompt cut to fit (as the serving front end would).
    """
    if dispatch not in ROUTERS:
        raise ValueError(f"simulate: unknown dispatcher {dispatch!r}; known: {[d.name for d in ROUTERS]}")
    if not costs:
        raise ValueError("simulate: the deployment has no replicas")
    inp = np.asarray(input_tokens, np.int64)
    out = np.maximum(np.asarray(output_tokens, np.int64), 1)
    out = np.minimum(out, max_model_len - 1)
    inp = np.clip(np.minimum(inp, max_model_len - out), 1, None)
    arrival = np.asarray(arrival_s, float)
    if np.any(np.diff(arrival) < 0):
        raise ValueError("simulate: arrivals must be in time order")
    reqs = Requests(arrival, inp, out)
    engines = [make_replica(k, c, reqs, engine, max_model_len) for k, c in enumerate(costs)]
    labels = np.asarray(labels, np.int64)

    router = ROUTERS[dispatch](labels, len(engines), weights)
    for i in range(len(arrival)):
        t = arrival[i]
        if router.reads_state:
            for e in engines:
                e.advance_until(t)
            k = router.route(i, engines)
        else:
            k = router.route(i, engines)
            engines[k].advance_until(t)
        engines[k].enqueue(i, t)
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
        scheduled_s=reqs.scheduled, preempted_s=reqs.preempted_s,
    )
