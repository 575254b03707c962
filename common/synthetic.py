"""Small synthetic traces for tests and examples, deterministic by seed, and writers for the on-disk formats.

Notation: I sampled iterations, R source ranks, L layers, M micro-batches, E experts, K request types, Q requests.

The writers produce exactly what the loaders in common.traces read (SmartMoE npz, Azure 2023 CSV, Mooncake JSONL,
generic CSV, and the raw SmartMoE `table_iter{I}_rank{R}.log` files), so tests can round-trip through real files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.traces import ExpertLoadTrace, RequestTrace

# File names of the real data directory, so a synthetic directory can stand in for it (paths.data_dir=<tmp>).
EXPERT_NPZ = "smartmoe_expert_trace/smartmoe_counts.npz"
AZURE_CODE = "azure_llm_inference_2023/AzureLLMInferenceTrace_code.csv"
AZURE_CONV = "azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv"


@dataclass(frozen=True)
class ExpertTraceSpec:
    """Shape and character of a synthetic expert-load trace."""

    num_iterations: int = 20  # I sampled iterations
    num_ranks: int = 4  # R source ranks
    num_layers: int = 3  # L MoE layers
    num_microbatches: int = 2  # M micro-batches per iteration
    num_experts: int = 8  # E experts
    tokens_per_microbatch: int = 256  # tokens each rank routes per micro-batch
    top_k: int = 2  # every token picks k experts, so each E-vector sums to tokens * k
    skew: float = 1.5  # std of the per-layer expert logits: 0 = uniform, larger = more skewed
    drift: float = 0.2  # std of the random walk the logits take between samples
    iteration_step: int = 10  # iterations[i] = 1 + i * step, as in the SmartMoE trace


def synthetic_expert_trace(spec: ExpertTraceSpec = ExpertTraceSpec(), seed: int = 0) -> ExpertLoadTrace:
    """Counts drawn per (iteration, rank, layer, micro-batch) from a multinomial over experts whose softmax
    probabilities follow a per-layer random walk; each E-vector sums to tokens_per_microbatch * top_k."""
    rng = np.random.default_rng(seed)
    i, r, n_l, m, e = spec.num_iterations, spec.num_ranks, spec.num_layers, spec.num_microbatches, spec.num_experts
    logits = rng.normal(0.0, spec.skew, size=(n_l, e))  # [L, E] starting popularity
    steps = rng.normal(0.0, spec.drift, size=(i, n_l, e))
    steps[0] = 0.0
    walk = logits[None] + np.cumsum(steps, axis=0)  # [I, L, E]
    p = np.exp(walk - walk.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    p = np.broadcast_to(p[:, None, :, None, :], (i, r, n_l, m, e))  # [I, R, L, M, E]
    counts = rng.multinomial(spec.tokens_per_microbatch * spec.top_k, p)
    iterations = 1 + spec.iteration_step * np.arange(i)
    return ExpertLoadTrace(counts, iterations, f"synthetic(seed={seed})")


def write_expert_npz(trace: ExpertLoadTrace, path: str | Path) -> Path:
    """The SmartMoE layout: `counts` uint16 [I, R, L, M, E], `iterations` int32 [I], `ranks` int32 [R]."""
    if trace.counts.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"write_expert_npz: counts up to {trace.counts.max()} do not fit the layout's uint16")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        counts=trace.counts.astype(np.uint16),
        iterations=trace.iterations.astype(np.int32),
        ranks=np.arange(trace.num_ranks, dtype=np.int32),
    )
    return path


def write_smartmoe_raw_logs(trace: ExpertLoadTrace, directory: str | Path) -> list[Path]:
    """The upstream form: one `table_iter{I}_rank{R}.log` per (iteration, rank), lines `{layer}:{json}` where json is
    M lists of E floats (upstream writes whole numbers as floats, e.g. `177.0`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ii, it in enumerate(trace.iterations):
        for r in range(trace.num_ranks):
            p = directory / f"table_iter{int(it)}_rank{r}.log"
            rows = [
                f"{layer}:{json.dumps(trace.counts[ii, r, layer].astype(float).tolist())}"
                for layer in range(trace.num_layers)
            ]
            p.write_text("\n".join(rows) + "\n")
            paths.append(p)
    return paths


@dataclass(frozen=True)
class RequestTypeSpec:
    """One request type: log-normal prompt and output lengths around these medians."""

    input_median: float  # prompt tokens
    output_median: float  # generated tokens
    share: float  # fraction of requests of this type (shares are normalised)
    sigma: float = 0.25  # log-space std of both lengths


DEFAULT_TYPES = (
    RequestTypeSpec(200.0, 20.0, 0.4),
    RequestTypeSpec(2000.0, 40.0, 0.3),
    RequestTypeSpec(600.0, 400.0, 0.3),
)


def synthetic_request_trace(
    num_requests: int = 500, rate_rps: float = 5.0, types=DEFAULT_TYPES, seed: int = 0
) -> tuple[RequestTrace, np.ndarray]:
    """Poisson arrivals at `rate_rps` (first at 0, times rounded to 1 us so every file format round-trips them) and
    log-normal lengths per type. Returns (trace, [Q] true type labels)."""
    rng = np.random.default_rng(seed)
    share = np.array([t.share for t in types], dtype=float)
    labels = rng.choice(len(types), size=num_requests, p=share / share.sum())
    gaps = rng.exponential(1.0 / rate_rps, size=num_requests)
    gaps[0] = 0.0
    arrival = np.round(np.cumsum(gaps), 6)
    med_in = np.array([t.input_median for t in types])[labels]
    med_out = np.array([t.output_median for t in types])[labels]
    sig = np.array([t.sigma for t in types])[labels]
    inp = np.maximum(1, np.round(med_in * np.exp(sig * rng.standard_normal(num_requests)))).astype(np.int64)
    out = np.maximum(1, np.round(med_out * np.exp(sig * rng.standard_normal(num_requests)))).astype(np.int64)
    return RequestTrace(arrival, inp, out, f"synthetic(seed={seed})"), labels


def write_azure_csv(trace: RequestTrace, path: str | Path, start: str = "2023-11-16 18:00:00") -> Path:
    """`TIMESTAMP,ContextTokens,GeneratedTokens` with 7 fractional digits, as Azure publishes it."""
    t0 = np.datetime64(start, "ns")
    stamps = t0 + np.round(trace.arrival_s * 1e9).astype("timedelta64[ns]")
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for s, a, b in zip(stamps, trace.input_tokens, trace.output_tokens):
        iso = str(s)  # 2023-11-16T18:00:00.123456789
        day, clock = iso.split("T")
        whole, _, frac = clock.partition(".")
        rows.append(f"{day} {whole}.{(frac + '0' * 9)[:7]},{a},{b}")
    return _write(path, "\n".join(rows) + "\n")


def write_mooncake_jsonl(trace: RequestTrace, path: str | Path) -> Path:
    """One JSON object per line: `timestamp` (ms), `input_length`, `output_length`, plus a `hash_ids` list as the
    real files carry (the loader ignores it)."""
    rows = []
    for t, a, b in zip(trace.arrival_s, trace.input_tokens, trace.output_tokens):
        ms = round(float(t) * 1000.0, 3)
        obj = {"timestamp": int(ms) if ms.is_integer() else ms, "input_length": int(a), "output_length": int(b)}
        obj["hash_ids"] = list(range(int(a) // 512 + 1))
        rows.append(json.dumps(obj))
    return _write(path, "\n".join(rows) + "\n")


def write_csv_trace(
    trace: RequestTrace, path: str | Path, time_col="time", input_col="input", output_col="output", time_unit="s"
) -> Path:
    """A generic CSV (numeric timestamps in `time_unit`) with an extra `id` column the loader must ignore."""
    scale = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[time_unit]
    rows = [f"id,{time_col},{input_col},{output_col}"]
    rows += [
        f"{k},{float(t) * scale!r},{a},{b}"
        for k, (t, a, b) in enumerate(zip(trace.arrival_s, trace.input_tokens, trace.output_tokens))
    ]
    return _write(path, "\n".join(rows) + "\n")


# The SmartMoE trace's shape (16 ranks, 24 layers, 4 micro-batches, 32 experts, top-2) with 51 sampled iterations
# instead of 501, so a run that falls back to it exercises the same code paths (16 -> 8 and 16 devices) in seconds.
SMARTMOE_LIKE = ExpertTraceSpec(
    num_iterations=51, num_ranks=16, num_layers=24, num_microbatches=4, num_experts=32, tokens_per_microbatch=512,
    iteration_step=100,
)

# Files of the real data directory that a synthetic file can stand in for (common.datapaths.ensure_files).
STAND_INS = (EXPERT_NPZ, AZURE_CODE, AZURE_CONV)


def write_stand_in(root: str | Path, name: str, seed: int = 0, spec: ExpertTraceSpec = SMARTMOE_LIKE) -> Path:
    """Write the synthetic stand-in for the data file `name` (one of STAND_INS) at root / name."""
    path = Path(root) / name
    if name == EXPERT_NPZ:
        return write_expert_npz(synthetic_expert_trace(spec, seed), path)
    if name == AZURE_CODE:
        return write_azure_csv(synthetic_request_trace(400, 4.0, seed=seed)[0], path)
    if name == AZURE_CONV:
        return write_azure_csv(synthetic_request_trace(900, 6.0, seed=seed + 1)[0], path)
    raise ValueError(f"no synthetic stand-in for {name!r}; there are stand-ins for {', '.join(STAND_INS)}")


def write_synthetic_data_dir(root: str | Path, seed: int = 0, spec: ExpertTraceSpec = ExpertTraceSpec()) -> Path:
    """A stand-in for the real data directory with the same relative file names (expert npz, Azure code and conv)."""
    for name in STAND_INS:
        write_stand_in(root, name, seed, spec)
    return Path(root)


def _write(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
