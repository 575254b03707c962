"""Real-engine benchmark: what the router adds over calling one vLLM engine directly, and how long a live switch
takes on CPU.

    loadwise experiment=oserve/bench_engines
    loadwise experiment=oserve/bench_engines bench_engines.rate_rps=4 bench_engines.rounds=5

"Directly" is vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`, its own process) on an engine
with the same settings as the router's replica (same model directory, dtype, max_model_len, max_num_seqs, eager mode,
KV space). "Routed" is our router (FastAPI/uvicorn in this process) over one replica: a Ray actor holding a vLLM
AsyncLLM. Both are up for the whole benchmark; only one is loaded at a time.

1. A trace slice (lengths scaled to the tiny model), its arrivals replaced by Poisson at bench_engines.rate_rps: the
   same fixed-rate open-loop load for both sides.
2. Start both servers (at once); one warm-up replay each (discarded).
3. Rounds of A/B, interleaved ABBA (round r runs direct then routed when r is even, routed then direct when odd), so a
   drift in the machine's load hits both sides alike. Every replay is the same client code (serving.loadgen) in a
   process of its own, so the client shares no event loop with the router; each replay has prompts of its own (no
   prefix-cache hit across replays).
4. Switch: apply a plan that moves the replica to another device (on CPU a new engine: its weights arrive by a
   reload) while a replay runs across the moment the new one takes over: start + warm-up of the new one, drain of
   the old one, total, and the requests each answered (none lost).
Figures: per side the median over rounds (and min / max) of P50 / P99 TTFT and e2e latency and output tokens/s; the
added latency is the median over rounds of routed / direct - 1 within a round (goal: <= 5% at P50); the switch
times. Writes rounds.csv, bench_engines.png. Wall-clock on a shared machine; the driver's CPU time beside.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from common.datapaths import ensure_files, locate_data_dir
from common.stats import RequestTypes
from common.traces import RequestTrace, load_request_trace
from serving.costmodel.iteration import ReplicaConfig
from serving.engines.config import engine_env
from serving.loadgen import LoadSpec, fit_trace, replay_from_process, summary
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


def direct_server(engine, port: int) -> subprocess.Popen:
    """vLLM's OpenAI server on one engine, in a session of its own (stopped by its process group); not yet healthy."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", engine.model, "--host",
           "127.0.0.1", "--port", str(port), "--dtype", engine.dtype, "--max-model-len", str(engine.max_model_len),
           "--max-num-seqs", str(engine.max_num_seqs), "--served-model-name", "tiny",
           "--disable-log-stats"]  # as the replicas run (their stats reach the router by a stat logger instead)
    if engine.enforce_eager:
        cmd.append("--enforce-eager")
    return subprocess.Popen(cmd, env=dict(os.environ, **engine_env(engine)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


async def healthy(proc: subprocess.Popen, port: int, timeout_s: float) -> float:
    """Wait until vLLM's server answers /health; returns seconds since its launch was awaited."""
    import httpx

    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() - t0 < timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM's api_server exited with {proc.returncode}")
            try:
                if (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1)
    raise RuntimeError(f"vLLM's api_server not healthy after {timeout_s} s")


def stop_direct(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


SIDES = ("direct", "routed")
METRICS = ("p50_e2e_s", "p99_e2e_s", "p50_ttft_s", "p99_ttft_s", "output_tokens_per_s")


def paired(rounds: list[dict]) -> dict:
    """Medians, minima and maxima over rounds of each side's figures, and of routed / direct - 1 within a round."""
    out = {}
    for side in SIDES:
        for m in METRICS:
            v = np.array([r[side][m] for r in rounds])
            out[f"{side}_{m}"] = {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}
    for m in METRICS:
        v = np.array([r["routed"][m] / r["direct"][m] - 1.0 for r in rounds])
        key = "throughput_ratio" if m == "output_tokens_per_s" else f"added_{m}"
        off = 1.0 if m == "output_tokens_per_s" else 0.0
        out[key] = {"median": float(np.median(v)) + off, "min": float(v.min()) + off, "max": float(v.max()) + off}
    return out


def run(cfg: DictConfig, out_dir: Path) -> dict:
    from serving.engines.cluster import start_ray, stop_ray
    from serving.executor.service import Service, with_model
    from serving.tinymodel import default_cache_root

    b = cfg.bench_engines
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    cpu0, wall0 = time.process_time(), time.perf_counter()
    engine = with_model(OmegaConf.to_object(b.engine), default_cache_root(os.environ))
    spec: LoadSpec = OmegaConf.to_object(b.loadgen)
    if int(b.rounds) < 1:
        raise ValueError(f"bench_engines.rounds: {b.rounds}; at least one A/B round")
    data_dir = ensure_files(locate_data_dir(cfg.paths.data_dir, os.environ), [b.trace_path], cfg.paths.fallback,
                            synthetic_dir=out_dir / "synthetic_data").root
    # Step 1
    fit = fit_trace(load_request_trace(Path(data_dir) / b.trace_path, b.trace_format), spec)
    rng = np.random.default_rng(int(cfg.seed))
    arr = np.cumsum(rng.exponential(1.0 / float(b.rate_rps), len(fit)))
    trace = RequestTrace(arr - arr[0], fit.input_tokens, fit.output_tokens, f"{fit.source}@{b.rate_rps}rps")
    out: dict = {"requests": len(trace), "rate_rps": float(b.rate_rps), "model": engine.model,
                 "rounds": int(b.rounds), "direct_means": "vLLM api_server process, same engine settings",
                 "routed_means": "loadwise router (this process) -> Ray actor -> vLLM AsyncLLM"}
    work = out_dir / "loadgen"
    work.mkdir(exist_ok=True)
    n_prompts = [0]

    def spec_for() -> LoadSpec:  # prompts of their own for every replay
        n_prompts[0] += 1
        return replace(spec, prompt_base=n_prompts[0] * len(trace))

    # Step 2
    port = free_port()
    proc = direct_server(engine, port)  # starts beside the replica below: the two start-ups overlap
    urls = {"direct": f"http://127.0.0.1:{port}/v1"}
    rounds: list[dict] = []

    async def bench():
        svc = Service(engine, RequestTypes(np.zeros((1, 2))), max_in_flight=10_000, model_name="tiny")
        try:
            t = time.perf_counter()

            async def routed_up():
                urls["routed"] = await svc.start(one_replica_plan(0)) + "/v1"
                out["routed_start_s"] = time.perf_counter() - t

            _, out["direct_start_s"] = await asyncio.gather(routed_up(), healthy(proc, port, float(b.start_timeout_s)))
            for side in SIDES:
                await replay_from_process(urls[side], "tiny", trace, spec_for(), work, f"warm-{side}")
            # Step 3
            for r in range(int(b.rounds)):
                row = {"round": r}
                for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
                    c0 = time.process_time()
                    row[side] = summary(await replay_from_process(urls[side], "tiny", trace, spec_for(), work, f"r{r}-{side}"))
                    # CPU of this process over the replay: the router's (and its Ray client's) when routed, ~0
                    # when direct (the client is a process of its own): what the router costs, whatever the load.
                    row[side]["driver_cpu_s"] = time.process_time() - c0
                    log.info("round %d %s: P50 e2e %.3f s, P99 e2e %.3f s, %.0f tok/s", r, side,
                             row[side]["p50_e2e_s"], row[side]["p99_e2e_s"], row[side]["output_tokens_per_s"])
                rounds.append(row)
            # Step 4
            # The load starts so that its middle falls where the new replica is expected ready (after as long as the
            # old one took to start): requests then straddle the table switch and the old replica has some to drain.
            old = svc.executor.replicas[0]
            old_name, before = old.name, dict(svc.dispatcher.served)
            expected = old.times.placement_s + old.times.load_s + old.times.warmup_s
            switch = asyncio.ensure_future(svc.apply(one_replica_plan(1)))
            await asyncio.sleep(max(0.0, expected - float(trace.arrival_s[-1]) / 2))
            during = summary(await replay_from_process(urls["routed"], "tiny", trace, spec_for(), work, "switch"))
            rep = await switch
            new = svc.executor.replicas[0]
            by = {name: n - before.get((j, name), 0) for (j, name), n in svc.dispatcher.served.items()}
            out["switch"] = {"start_s": rep.start_s, "drain_s": rep.drain_s, "total_s": rep.total_s,
                             "new_load_s": new.times.load_s, "new_warmup_s": new.times.warmup_s,
                             "under_load_answered": during["answered"], "under_load_errors": during["errors"],
                             "served_by_old": by.get(old_name, 0), "served_by_new": by.get(new.name, 0)}
        finally:
            await svc.stop()

    try:
        start_ray(num_cpus=int(b.num_cpus))
        try:
            asyncio.run(bench())
        finally:
            stop_ray()
    finally:
        stop_direct(proc)
    out["per_round"] = rounds
    out.update(paired(rounds))
    out["goal_added_p50_e2e"] = GOAL_ADDED_P50
    out["meets_goal"] = bool(out["added_p50_e2e_s"]["median"] <= GOAL_ADDED_P50)
    out["router_cpu_ms_per_request"] = 1e3 * float(np.median([r["routed"]["driver_cpu_s"] for r in rounds])) / len(trace)
    out["driver_cpu_s"] = time.process_time() - cpu0
    out["wall_s"] = time.perf_counter() - wall0
    write_rounds(out_dir / "rounds.csv", rounds)
    plot(out_dir / "bench_engines.png", rounds, {"rate": f"{b.rate_rps} rps", "requests": len(trace)})
    print_table(out)
    return out


def write_rounds(path: Path, rounds: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["round", "side", *METRICS, "answered", "errors"])
        for r in rounds:
            for side in SIDES:
                w.writerow([r["round"], side, *(r[side][m] for m in METRICS), r[side]["answered"], r[side]["errors"]])


def print_table(out: dict) -> None:
    lines = [f"{'figure':<22} {'direct':>22} {'routed':>22} {'routed/direct-1':>24}"]
    for m in METRICS:
        cell = lambda d: f"{d['median']:.4f} [{d['min']:.4f},{d['max']:.4f}]"  # noqa: E731
        ratio = out["throughput_ratio" if m == "output_tokens_per_s" else f"added_{m}"]
        lines.append(f"{m:<22} {cell(out[f'direct_{m}']):>22} {cell(out[f'routed_{m}']):>22} "
                     f"{100 * (ratio['median'] - (1.0 if m == 'output_tokens_per_s' else 0.0)):>+7.1f}% "
                     f"[{100 * (ratio['min'] - (1.0 if m == 'output_tokens_per_s' else 0.0)):+.1f},"
                     f"{100 * (ratio['max'] - (1.0 if m == 'output_tokens_per_s' else 0.0)):+.1f}]")
    sw = out["switch"]
    lines.append(f"median [min,max] over {out['rounds']} ABBA rounds at {out['rate_rps']} rps; goal added P50 e2e <= "
                 f"{100 * GOAL_ADDED_P50:.0f}%: {'met' if out['meets_goal'] else 'NOT met'}")
    lines.append(f"router CPU (this process, routed rounds): {out['router_cpu_ms_per_request']:.2f} ms per request")
    lines.append(f"switch under load: start+warm {sw['start_s']:.1f} s (load {sw['new_load_s']:.1f} s), drain "
                 f"{sw['drain_s']:.2f} s, total {sw['total_s']:.1f} s; {sw['under_load_errors']} errors of "
                 f"{sw['under_load_answered'] + sw['under_load_errors']} (old replica answered {sw['served_by_old']}, "
                 f"new {sw['served_by_new']})")
    print("\n".join(lines), flush=True)
    log.info("router overhead:\n%s", "\n".join(lines))


def plot(path: Path, rounds: list[dict], settings: dict) -> None:
    from experiments import plotting

    fig, axes = plotting.figure(1, 2, "Router vs vLLM's own server, interleaved rounds", settings)
    x = [r["round"] for r in rounds]
    for ax, m in ((axes[0, 0], "p50_e2e_s"), (axes[0, 1], "p99_e2e_s")):
        for i, side in enumerate(SIDES):
            plotting.line(ax, x, [r[side][m] for r in rounds], side, index=i)
        ax.set_xlabel("round")
        ax.set_ylabel(m.replace("_s", " (s)").replace("_", " "))
        plotting.legend(ax)
    plotting.save(fig, path)
