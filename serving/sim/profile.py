"""n_kj profiled in the simulator: the highest Poisson rate of type j's own requests one replica sustains.

The analytic estimate (costmodel.iteration.type_capacity) averages request lengths; a real replica also queues when a
few long requests fill its KV cache. Profiling replays the type's real lengths, as a deployment would measure its
engines offline, and keeps the analytic value as the first guess of a bisection. `SimulatedProfiler` is the
scheduler's CapacityProfiler (serving.scheduler.Problem.profiler): the scheduler calls it and never imports this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.costmodel.iteration import IterationCost
from serving.sim.dispatcher import Dispatcher
from serving.sim.metrics import request_latencies
from serving.sim.replica import EngineConfig
from serving.sim.simulator import simulate


@dataclass(frozen=True)
class SimulatedProfiler:
    ttft_target_s: float  # the P90 time to first token a sustainable rate must keep to
    tpot_target_s: float | None  # the P90 time per output token it must keep to (None: no TPOT target)
    max_batched_tokens: int = 8192  # the replica's prefill token budget
    max_model_len: int = 8192  # longest request; longer ones are cut as the serving front end would
    num_requests: int = 300  # requests replayed per probe
    iters: int = 7  # bisection steps after bracketing
    seed: int = 0  # draws of the type's requests and of the Poisson arrivals

    def __call__(self, cost: IterationCost, input_tokens, output_tokens, guess_rps: float) -> float:
        return simulated_rate(cost, input_tokens, output_tokens, guess_rps, self)

    def sustains(self, cost: IterationCost, inp: np.ndarray, out: np.ndarray, rate: float) -> bool:
        """Past the warm-up quarter, P90 TTFT (and P90 TPOT, with a target) within target at Poisson `rate`."""
        rng = np.random.default_rng(self.seed)
        n = len(inp)
        arr = np.cumsum(rng.exponential(1 / rate, n))
        res = simulate(arr - arr[0], inp, out, np.zeros(n, np.int64), [cost], Dispatcher.round_robin,
                       engine=EngineConfig(max_batched_tokens=self.max_batched_tokens),
                       max_model_len=self.max_model_len)
        lat = request_latencies(res.arrival_s, res.first_token_s, res.finish_s, out)
        late = slice(n // 4, None)  # past the warm-up
        ok = np.percentile(lat["ttft_s"][late], 90) <= self.ttft_target_s
        if self.tpot_target_s is not None:
            ok &= np.percentile(lat["tpot_s"][late], 90) <= self.tpot_target_s
        return bool(ok)


def simulated_rate(cost: IterationCost, inp, out, guess: float, profiler: SimulatedProfiler) -> float:
    """Bisection on the rate (requests/s) between the last sustained and the first failed probe.

    1. Draw num_requests of the type's (input, output) pairs (fixed seed).
    2. Bracket: from the analytic guess, halve until sustained and double until not.
    3. Bisect `iters` times in log space; return the highest rate that was sustained.
    """
    if len(inp) == 0:
        return float(guess)
    p = profiler
    rng = np.random.default_rng(p.seed)
    idx = rng.integers(0, len(inp), p.num_requests)
    i = np.minimum(np.asarray(inp)[idx], p.max_model_len - 1)
    o = np.clip(np.asarray(out)[idx], 1, p.max_model_len - 1)
    lo, hi = None, None
    r = max(guess, 1e-3)
    for _ in range(12):  # Step 2
        if p.sustains(cost, i, o, r):
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
    for _ in range(p.iters):  # Step 3
        mid = float(np.sqrt(lo * hi))
        if p.sustains(cost, i, o, mid):
            lo = mid
        else:
            hi = mid
    return float(lo)
