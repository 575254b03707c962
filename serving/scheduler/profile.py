"""n_kj profiled in the simulator: the highest Poisson rate of type j's own requests one replica sustains.

The analytic estimate (costmodel.iteration.type_capacity) averages request lengths; a real replica also queues when a
few long requests fill its KV cache. Profiling replays the type's real lengths, as a deployment would measure its
engines offline, and keeps the analytic value as the first guess of a bisection.
"""

from __future__ import annotations

import numpy as np

from serving.costmodel.iteration import IterationCost


def _sustains(cost, inp, out, rate, cfg, max_model_len, seed) -> bool:
    from serving.sim.metrics import request_latencies
    from serving.sim.replica import EngineConfig
    from serving.sim.simulator import simulate

    rng = np.random.default_rng(seed)
    n = len(inp)
    arr = np.cumsum(rng.exponential(1 / rate, n))
    res = simulate(arr - arr[0], inp, out, np.zeros(n, np.int64), [cost], "round_robin",
                   engine=EngineConfig(max_batched_tokens=cfg.max_batched_tokens), max_model_len=max_model_len)
    lat = request_latencies(res.arrival_s, res.first_token_s, res.finish_s, out)
    late = slice(n // 4, None)  # past the warm-up
    ok = np.percentile(lat["ttft_s"][late], 90) <= cfg.ttft_target_s
    if cfg.tpot_target_s is not None:
        ok &= np.percentile(lat["tpot_s"][late], 90) <= cfg.tpot_target_s
    return bool(ok)


def simulated_rate(cost: IterationCost, inp, out, guess: float, cfg, max_model_len: int, num_requests: int = 300,
                   iters: int = 7, seed: int = 0) -> float:
    """Bisection on the rate (requests/s) between the last sustained and the first failed probe.

    1. Draw num_requests of the type's (input, output) pairs (fixed seed).
    2. Bracket: from the analytic guess, halve until sustained and double until not.
    3. Bisect `iters` times in log space; return the highest rate that was sustained.
    """
    if len(inp) == 0:
        return float(guess)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(inp), num_requests)
    i = np.minimum(np.asarray(inp)[idx], max_model_len - 1)
    o = np.clip(np.asarray(out)[idx], 1, max_model_len - 1)
    lo, hi = None, None
    r = max(guess, 1e-3)
    for _ in range(12):  # Step 2
        if _sustains(cost, i, o, r, cfg, max_model_len, seed):
            lo = r
            if hi is not None:
                break
            r *= 2
        else:
            hi = r
            if lo is not None:
                break
            r /= 2
    if lo is None:
        return float(r)  # nothing sustained even at a tiny rate: report the smallest probe
    if hi is None:
        return float(lo)
    for _ in range(iters):  # Step 3
        mid = float(np.sqrt(lo * hi))
        if _sustains(cost, i, o, mid, cfg, max_model_len, seed):
            lo = mid
        else:
            hi = mid
    return float(lo)
