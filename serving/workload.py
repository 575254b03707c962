"""Workload seen by the scheduler: request types (k-means over log lengths) and per-type arrival rates.

Notation: R requests, J request types; I_j / O_j mean input / output tokens of type j, lambda_j its rate (req/s).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from common.stats import fit_request_types, type_rates
from common.traces import RequestTrace


class PhaseSource(str, Enum):
    """Where a phase of a phase-shifting workload draws its requests (lower case: OmegaConf matches member names)."""

    conv = "conv"  # the Azure 2023 conversation trace
    code = "code"  # the Azure 2023 code trace (long prompts, short outputs)
    arxiv = "arxiv"  # the conversation trace's arrivals with arXiv-summarisation lengths (long prompts)
    sharegpt = "sharegpt"  # the conversation trace's arrivals with ShareGPT lengths (long outputs)


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


def arrivals(num_requests: int, rate_rps: float, burst_cv: float = 1.0, seed: int = 0) -> np.ndarray:
    """[R] arrival times from 0: gamma inter-arrivals of mean 1 / rate_rps and coefficient of variation burst_cv
    (1: Poisson; > 1: bursty, requests bunch up with long gaps between, as in the Azure code trace)."""
    if not rate_rps > 0 or not burst_cv > 0:
        raise ValueError(f"arrivals: rate_rps and burst_cv must be > 0, got {rate_rps}, {burst_cv}")
    rng = np.random.default_rng(seed)
    shape = 1.0 / burst_cv**2
    gaps = rng.gamma(shape, 1.0 / (rate_rps * shape), size=num_requests)
    t = np.cumsum(gaps)
    return t - t[0]


def load_length_pool(path, name: str = "") -> RequestTrace:
    """A lengths-only CSV (num_prefill_tokens, num_decode_tokens: the ShareGPT / arXiv statistics) as a trace whose
    arrivals are all 0: a pool for `mix_types` or `replace_lengths` to draw from."""
    data = np.genfromtxt(path, delimiter=",", names=True, dtype=np.int64, usecols=(0, 1))
    inp, out = np.atleast_1d(data["num_prefill_tokens"]), np.atleast_1d(data["num_decode_tokens"])
    return RequestTrace(np.zeros(len(inp)), inp, np.maximum(out, 1), name or str(path))


def replace_lengths(trace: RequestTrace, pool: RequestTrace, share: float, seed: int = 0) -> RequestTrace:
    """The trace's own arrivals, with each request's lengths replaced by a draw from `pool` with probability
    `share` (e.g. long arXiv prompts among the conv trace's chats, keeping its real burstiness)."""
    if not 0 <= share <= 1:
        raise ValueError(f"replace_lengths: share must lie in [0, 1], got {share}")
    rng = np.random.default_rng(seed)
    swap = rng.random(len(trace)) < share
    idx = rng.integers(0, len(pool), size=int(swap.sum()))
    inp, out = trace.input_tokens.copy(), trace.output_tokens.copy()
    inp[swap], out[swap] = pool.input_tokens[idx], pool.output_tokens[idx]
    return RequestTrace(trace.arrival_s, inp, out, f"{trace.source} + {share:g} of {pool.source}")


def mix_types(pools: list[RequestTrace], weights, num_requests: int, rate_rps: float, seed: int = 0,
              burst_cv: float = 1.0) -> RequestTrace:
    """A synthetic trace: gamma arrivals at `rate_rps` (burst_cv 1: Poisson), each request's lengths drawn from pool j
    w.p. weights[j]."""
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
    if burst_cv == 1.0:  # the Poisson draw from the same generator as before, so earlier mixes stay identical
        arr = np.cumsum(rng.exponential(1.0 / rate_rps, size=num_requests))
        arr = arr - arr[0]
    else:
        arr = arrivals(num_requests, rate_rps, burst_cv, seed=seed + 1)
    return RequestTrace(arr, inp, out, "mix")


def phase_shift(sources: list[RequestTrace], num_phases: int, phase_s: float, change: float, seed: int = 0,
                offset_s: float = 0.0) -> RequestTrace:
    """A trace whose request mix shifts every `phase_s` seconds: phase p draws on sources[p mod S].

    Phase p covers [p phase_s, (p + 1) phase_s) and takes the same window of real time from its sources, from
    `offset_s` on (wrapping round a source shorter than that): every request of sources[0] in the window is kept with
    probability 1 - change and every request of sources[p mod S] with probability `change` (phases of sources[0]
    keep all of its requests). So change 0 is sources[0] throughout (a stable workload) and change 1 alternates whole
    slices of the sources; in between the mix moves by `change` at each phase boundary, at a rate that stays the
    sources' own (give them alike rates, e.g. through RequestTrace.scale_rate).
    """
    if not sources:
        raise ValueError("phase_shift: no source traces")
    if num_phases < 1 or not phase_s > 0:
        raise ValueError(f"phase_shift: num_phases must be >= 1 and phase_s > 0, got {num_phases}, {phase_s}")
    if not 0 <= change <= 1:
        raise ValueError(f"phase_shift: change must lie in [0, 1], got {change}")
    rng = np.random.default_rng(seed)
    parts = []
    for p in range(num_phases):
        pieces = [(sources[0], 1.0)] if p % len(sources) == 0 else [(sources[0], 1 - change),
                                                                     (sources[p % len(sources)], change)]
        for src, keep in pieces:
            span = max(src.duration_s - phase_s, 0.0)
            t0 = (offset_s + p * phase_s) % span if span > 0 else 0.0
            s = src.slice(t0, t0 + phase_s)
            m = rng.random(len(s)) < keep
            parts.append((s.arrival_s[m] + p * phase_s, s.input_tokens[m], s.output_tokens[m]))
    t = np.concatenate([a for a, _, _ in parts])
    o = np.argsort(t, kind="stable")
    names = "/".join(s.source.split("/")[-1] for s in sources)
    return RequestTrace(t[o], np.concatenate([i for _, i, _ in parts])[o], np.concatenate([x for _, _, x in parts])[o],
                        f"phase shift {names}, change {change:g}")
