"""Real-engine benchmark: what the router adds over calling one vLLM engine directly, and how long a live switch
takes on CPU.

    loadwise experiment=oserve/bench_engines
    loadwise experiment=oserve/bench_engines bench_engines.rate_rps=4 bench_engines.loadgen.num_requests=80

1. A trace slice (lengths scaled to the tiny model), its arrivals replaced by Poisson at bench_engines.rate_rps, so
   both sides see the same fixed-rate open-loop load.
2. Direct: vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`) on one engine; replay.
3. Routed: the router over one replica (same engine settings) on Ray; replay the same requests.
4. Switch: apply a plan that moves the replica (a new engine: on CPU its weights arrive by a reload), under no load;
   its start, drain and total seconds.
Figures: P50 / P99 TTFT and e2e latency and output tokens/s of each side, the added P50 / P99 latency (goal: <= 5%
at P50), the switch times. Wall-clock on a shared 2-core machine: the two sides run one after the other, never
together; process CPU time of this driver is reported beside.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from common.datapaths import ensure_files, locate_data_dir
from common.stats import RequestTypes
from common.traces import RequestTrace, load_request_trace
from serving.costmodel.iteration import ReplicaConfig
from serving.engines.config import engine_env
from serving.loadgen import fit_trace, replay, summary
from serving.scheduler.plan import DeploymentPlan

log = logging.getLogger(__name__)
GOAL_ADDED_P50 = 0.05


def one_replica_plan(device: int) -> DeploymentPlan:
    return DeploymentPlan(replicas=(ReplicaConfig(1),), devices=((device,),), dispatch=((1.0,),), type_rates=(1.0,),
                          served_rps=1.0, peak_utilisation=0.0, utilisation=(0.0,), policy="bench")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def direct_server(engine, port: int, timeout_s: float) -> subprocess.Popen:
    """vLLM's OpenAI server on one engine, in a session of its own (stopped by its process group)."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", engine.model, "--host",
           "127.0.0.1", "--port", str(port), "--dtype", engine.dtype, "--max-model-len", str(engine.max_model_len),
           "--max-num-seqs", str(engine.max_num_seqs), "--served-model-name", "tiny"]
    if engine.enforce_eager:
        cmd.append("--enforce-eager")
    proc = subprocess.Popen(cmd, env=dict(os.environ, **engine_env(engine)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM's api_server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"vLLM's api_server not healthy after {timeout_s} s")


def stop_direct(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run(cfg: DictConfig, out_dir: Path) -> dict:
    from serving.engines.cluster import start_ray, stop_ray
    from serving.executor.service import Service, with_model
    from serving.tinymodel import default_cache_root

    b = cfg.bench_engines
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    cpu0 = time.process_time()
    engine = with_model(OmegaConf.to_object(b.engine), default_cache_root(os.environ))
    spec = OmegaConf.to_object(b.loadgen)
    data_dir = ensure_files(locate_data_dir(cfg.paths.data_dir, os.environ), [b.trace_path], cfg.paths.fallback,
                            synthetic_dir=out_dir / "synthetic_data").root
    # Step 1
    fit = fit_trace(load_request_trace(Path(data_dir) / b.trace_path, b.trace_format), spec)
    rng = np.random.default_rng(int(cfg.seed))
    arr = np.cumsum(rng.exponential(1.0 / float(b.rate_rps), len(fit)))
    trace = RequestTrace(arr - arr[0], fit.input_tokens, fit.output_tokens, f"{fit.source}@{b.rate_rps}rps")
    out: dict = {"requests": len(trace), "rate_rps": float(b.rate_rps), "model": engine.model}
    # Step 2
    port = free_port()
    t0 = time.perf_counter()
    proc = direct_server(engine, port, float(b.start_timeout_s))
    out["direct_start_s"] = time.perf_counter() - t0
    try:
        asyncio.run(replay(f"http://127.0.0.1:{port}/v1", "tiny", trace, spec))  # warm: first-call costs paid
        out["direct"] = summary(asyncio.run(replay(f"http://127.0.0.1:{port}/v1", "tiny", trace, spec)))
    finally:
        stop_direct(proc)
    log.info("direct: %s", out["direct"])

    # Steps 3 and 4
    async def routed():
        svc = Service(engine, RequestTypes(np.zeros((1, 2))), max_in_flight=10_000, model_name="tiny")
        try:
            t = time.perf_counter()
            url = await svc.start(one_replica_plan(0))
            out["routed_start_s"] = time.perf_counter() - t
            await replay(url + "/v1", "tiny", trace, spec)
            out["routed"] = summary(await replay(url + "/v1", "tiny", trace, spec))
            rep = await svc.apply(one_replica_plan(1))
            out["switch"] = {"start_s": rep.start_s, "drain_s": rep.drain_s, "total_s": rep.total_s}
        finally:
            await svc.stop()

    start_ray(num_cpus=int(b.num_cpus))
    try:
        asyncio.run(routed())
    finally:
        stop_ray()
    log.info("routed: %s", out["routed"])
    d, r = out["direct"], out["routed"]
    for q in ("p50", "p99"):
        for m in ("e2e_s", "ttft_s"):
            out[f"added_{q}_{m}"] = r[f"{q}_{m}"] / d[f"{q}_{m}"] - 1.0
    out["throughput_ratio"] = r["output_tokens_per_s"] / d["output_tokens_per_s"]
    out["goal_added_p50_e2e"] = GOAL_ADDED_P50
    out["meets_goal"] = bool(out["added_p50_e2e_s"] <= GOAL_ADDED_P50)
    out["driver_cpu_s"] = time.process_time() - cpu0
    log.info("router adds %+.1f%% P50 / %+.1f%% P99 e2e latency (goal <= %.0f%% at P50); switch %.1f s",
             100 * out["added_p50_e2e_s"], 100 * out["added_p99_e2e_s"], 100 * GOAL_ADDED_P50,
             out["switch"]["total_s"])
    return out
