"""Workload seen by the scheduler: request types (k-means over log lengths) and per-type arrival rates.

Notation: R requests, J request types; I_j / O_j mean input / output tokens of type j, lambda_j its rate (req/s).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.stats import fit_request_types, type_rates
from common.traces import RequestTrace


@dataclass(frozen=True)
class Workload:
    trace: RequestTrace  # the requests, arrival-ordered
    labels: np.ndarray  # [R] type of each request
    mean_input: np.ndarray  # [J] I_j, tokens
    mean_output: np.ndarray  # [J] O_j, tokens
    rates: np.ndarray  # [J] lambda_j, requests/s over the trace's span

    @property
    def num_types(self) -> int:
        return len(self.rates)


def build_workload(trace: RequestTrace, num_types: int = 4, seed: int = 0, rate_quantile: float | None = None,
                   interval_s: float = 60.0) -> Workload:
    """1. k-means types over (log1p in, log1p out); 2. per-type mean lengths; 3. per-type rates: the mean over the
    trace, or (rate_quantile q) the q-quantile of the per-interval rates, so that a plan also holds through bursts
    (the Azure conv hour's per-minute rate peaks at 1.5x its mean)."""
    if len(trace) == 0:
        raise ValueError(f"request trace {trace.source!r} is empty")
    distinct = np.unique(np.stack([trace.input_tokens, trace.output_tokens]), axis=1).shape[1]
    k = min(num_types, distinct)  # k-means needs k distinct (input, output) points
    types = fit_request_types(trace.input_tokens, trace.output_tokens, k=k, seed=seed)
    labels = types.assign(trace.input_tokens, trace.output_tokens)
    span = max(trace.duration_s, 1e-9)
    mean_in = np.array([trace.input_tokens[labels == j].mean() if np.any(labels == j) else 1.0 for j in range(k)])
    mean_out = np.array([trace.output_tokens[labels == j].mean() if np.any(labels == j) else 1.0 for j in range(k)])
    rates = np.bincount(labels, minlength=k) / span
    if rate_quantile is not None:
        if not 0 <= rate_quantile <= 1:
            raise ValueError(f"rate_quantile must lie in [0, 1], got {rate_quantile}")
        if span >= 2 * interval_s:  # too short a trace has no meaningful per-interval rates: keep the mean
            per_bin = type_rates(trace.arrival_s, labels, k, interval_s)[: int(span // interval_s)]  # full bins only
            rates = np.quantile(per_bin, rate_quantile, axis=0)
    return Workload(trace, labels, mean_in, np.maximum(mean_out, 1.0), rates)


def length_cv(trace: RequestTrace) -> float:
    """Coefficient of variation of per-request tokens (input + output): how mixed the request sizes are."""
    tot = (trace.input_tokens + trace.output_tokens).astype(float)
    return float(tot.std() / tot.mean())


def mix_types(pools: list[RequestTrace], weights, num_requests: int, rate_rps: float, seed: int = 0) -> RequestTrace:
    """A synthetic trace: Poisson arrivals at `rate_rps`, each request's lengths drawn from pool j w.p. weights[j]."""
    w = np.asarray(weights, float)
    w = w / w.sum()
    rng = np.random.default_rng(seed)
    which = rng.choice(len(pools), size=num_requests, p=w)
    inp = np.empty(num_requests, np.int64)
    out = np.empty(num_requests, np.int64)
    for j, pool in enumerate(pools):
        m = which == j
        idx = rng.integers(0, len(pool), size=int(m.sum()))
        inp[m], out[m] = pool.input_tokens[idx], pool.output_tokens[idx]
    arr = np.cumsum(rng.exponential(1.0 / rate_rps, size=num_requests))
    return RequestTrace(arr - arr[0], inp, out, "mix")
