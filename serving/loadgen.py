"""Replay a request trace against any OpenAI-compatible endpoint with the `openai` client, recording per request
its time to first token (TTFT), time per output token after the first (TPOT) and end-to-end latency.

A trace's lengths come from large models' traffic (prompts of thousands of tokens); `fit_trace` scales a slice of it
to a small model's context and a small machine's speed: lengths multiplied then capped, arrivals stretched.
Prompts are token-id lists of the exact length (the completions API accepts them), and `ignore_eos` (a vLLM extra;
`vllm_extras=False` leaves it out for servers that reject unknown fields) makes every output its full length.

    trace = fit_trace(load_request_trace(path, "azure"), LoadSpec(num_requests=50, time_scale=4.0))
    records = asyncio.run(replay(base_url, "tiny", trace, spec))
    summary(records)  # P50 / P99 of each latency, throughput
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common.traces import RequestTrace


# Not frozen: the Hydra schema nests this class, and OmegaConf makes a frozen dataclass read-only (no overrides).
@dataclass
class LoadSpec:
    num_requests: int = 50  # first this many requests of the trace (0: none, the load generator is off)
    start_index: int = 0  # where the slice starts
    time_scale: float = 1.0  # inter-arrival times multiplied by this (> 1: a slower rate, for a slower machine)
    length_scale: float = 0.1  # prompt and output lengths multiplied by this, then capped
    max_input: int = 256  # prompt cap, tokens
    max_output: int = 64  # output cap, tokens
    stream: bool = True  # streaming requests (TTFT is only observable with them)
    vllm_extras: bool = True  # send ignore_eos, so every output is exactly its length
    timeout_s: float = 300.0  # per request
    prompt_base: int = 0  # prompt index of the first request (replays of other prompts: no prefix-cache hits)


@dataclass(frozen=True)
class RequestRecord:
    index: int  # position in the replayed slice
    arrival_s: float  # scheduled send time, from the replay's start
    prompt_tokens: int
    max_tokens: int
    output_tokens: int  # as the server reported (usage) or counted from the stream
    ttft_s: float  # first streamed chunk (non-streaming: the whole answer)
    tpot_s: float  # (e2e - ttft) / (output_tokens - 1); 0 for a one-token output
    e2e_s: float  # send to last byte
    error: str = ""  # empty when answered


def fit_trace(trace: RequestTrace, spec: LoadSpec) -> RequestTrace:
    """The slice [start_index, start_index + num_requests), lengths scaled and capped (>= 1), arrivals from 0 and
    stretched by time_scale."""
    sl = slice(spec.start_index, spec.start_index + spec.num_requests)
    arr = trace.arrival_s[sl]
    if len(arr) == 0:
        raise ValueError(f"load slice {spec.start_index}..+{spec.num_requests} of {trace.source!r} is empty")
    inp = np.clip(np.round(trace.input_tokens[sl] * spec.length_scale), 1, spec.max_input).astype(np.int64)
    out = np.clip(np.round(trace.output_tokens[sl] * spec.length_scale), 1, spec.max_output).astype(np.int64)
    return RequestTrace((arr - arr[0]) * spec.time_scale, inp, out, f"{trace.source}[fit]")


def prompt_ids(index: int, length: int, vocab: int = 256, offset: int = 10) -> list[int]:
    """A deterministic prompt of `length` token ids. Its first two tokens spell `index` (base `vocab`), so prompts
    of indices under vocab**2 differ from their first KV block on and no prefix cache hides a prefill."""
    head = [offset + index % vocab, offset + (index // vocab) % vocab]
    return (head + [offset + (index * 7919 + 31 * p) % vocab for p in range(2, length)])[:length]


async def replay(base_url: str, model: str, trace: RequestTrace, spec: LoadSpec,
                 api_key: str = "none") -> list[RequestRecord]:
    """Send each request at its arrival time (open loop: a slow server does not slow the arrivals)."""
    import httpx
    import openai

    limits = httpx.Limits(max_connections=10_000, max_keepalive_connections=1000)
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=spec.timeout_s,
                                http_client=httpx.AsyncClient(limits=limits, timeout=spec.timeout_s))
    t0 = time.perf_counter()

    async def one(i: int) -> RequestRecord:
        at = float(trace.arrival_s[i])
        await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
        n_in, n_out = int(trace.input_tokens[i]), int(trace.output_tokens[i])
        extra = {"ignore_eos": True} if spec.vllm_extras else {}
        sent = time.perf_counter()
        first, got = None, 0
        try:
            if spec.stream:
                stream = await client.completions.create(
                    model=model, prompt=prompt_ids(spec.prompt_base + i, n_in), max_tokens=n_out, stream=True,
                    stream_options={"include_usage": True}, extra_body=extra)
                async for ev in stream:
                    if first is None and ev.choices:
                        first = time.perf_counter()
                    if ev.usage is not None:
                        got = ev.usage.completion_tokens
            else:
                r = await client.completions.create(model=model, prompt=prompt_ids(spec.prompt_base + i, n_in), max_tokens=n_out,
                                                    extra_body=extra)
                got = r.usage.completion_tokens
            end = time.perf_counter()
            first = first or end
            tpot = (end - first) / (got - 1) if got > 1 else 0.0
            return RequestRecord(i, at, n_in, n_out, got, first - sent, tpot, end - sent)
        except Exception as e:  # recorded, not raised: one failure must not end the replay
            end = time.perf_counter()
            return RequestRecord(i, at, n_in, n_out, got, float("nan"), float("nan"), end - sent,
                                 f"{type(e).__name__}: {e}"[:300])

    try:
        return list(await asyncio.gather(*[one(i) for i in range(len(trace))]))
    finally:
        await client.close()


def summary(records: list[RequestRecord]) -> dict:
    """P50 / P99 of TTFT, TPOT and e2e over the answered requests; output tokens/s over the replay's span."""
    ok = [r for r in records if not r.error]
    out = {"requests": len(records), "answered": len(ok), "errors": len(records) - len(ok)}
    if not ok:
        return out
    for key in ("ttft_s", "tpot_s", "e2e_s"):
        v = np.array([getattr(r, key) for r in ok])
        out[f"p50_{key}"], out[f"p99_{key}"] = float(np.percentile(v, 50)), float(np.percentile(v, 99))
    span = max(r.arrival_s + r.e2e_s for r in ok) - min(r.arrival_s for r in ok)
    out["output_tokens_per_s"] = sum(r.output_tokens for r in ok) / max(span, 1e-9)
    return out


def records_table(records: list[RequestRecord]) -> list[dict]:
    return [asdict(r) for r in records]


async def replay_from_process(base_url: str, model: str, trace: RequestTrace, spec: LoadSpec, work: Path,
                              tag: str) -> list[RequestRecord]:
    """`replay` from a process of its own (`main`), so that the client shares no event loop or CPU thread with a
    server in the caller's process (the router); its request and record files are kept in `work` as `tag`.*."""
    import json
    import sys

    req, res = Path(work) / f"{tag}.requests.json", Path(work) / f"{tag}.records.json"
    req.write_text(json.dumps({"arrival_s": trace.arrival_s.tolist(), "input_tokens": trace.input_tokens.tolist(),
                               "output_tokens": trace.output_tokens.tolist(), "spec": asdict(spec)}))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "serving.loadgen", base_url, model, str(req),
                                                str(res), stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator {tag} exited with {proc.returncode}: {err.decode()[-500:]}")
    return [RequestRecord(**r) for r in json.loads(res.read_text())]


def main(argv: list[str] | None = None) -> None:
    """Replay a request file against an endpoint from a process of its own, so that the client's event loop shares
    nothing with the server it measures:

        python -m serving.loadgen BASE_URL MODEL REQUESTS.json OUT.json

    REQUESTS.json: {"arrival_s": [...], "input_tokens": [...], "output_tokens": [...], "spec": {LoadSpec fields}};
    OUT.json: the records (records_table)."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m serving.loadgen", description=main.__doc__.splitlines()[0])
    ap.add_argument("base_url")
    ap.add_argument("model")
    ap.add_argument("requests")
    ap.add_argument("out")
    a = ap.parse_args(argv)
    req = json.loads(open(a.requests).read())
    trace = RequestTrace(np.asarray(req["arrival_s"], float), np.asarray(req["input_tokens"], np.int64),
                         np.asarray(req["output_tokens"], np.int64), "file")
    records = asyncio.run(replay(a.base_url, a.model, trace, LoadSpec(**req["spec"])))
    with open(a.out, "w") as f:
        json.dump(records_table(records), f)


if __name__ == "__main__":
    main()
