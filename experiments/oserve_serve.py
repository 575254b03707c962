"""Serve a deployment plan on real vLLM engines: replicas as Ray actors, the OpenAI-compatible router on 127.0.0.1.

    loadwise experiment=oserve/serve                          # serve until Ctrl-C; prints the router's URL
    loadwise experiment=oserve/serve serve.duration_s=60      # stop by itself
    loadwise experiment=oserve/serve serve.loadgen.num_requests=40 serve.switch_after_s=5

1. Start Ray (a local cluster of serve.num_cpus CPUs, or join serve.ray_address) and the plan's replicas (started
   and warmed in parallel), then the router; print its URL.
2. Optionally replay a trace slice through the router (serve.loadgen) and switch to serve.switch_to mid-way.
3. Stop when the replay ends, after serve.duration_s, after serve.max_requests answered requests, or on Ctrl-C:
   router first, then replicas, then Ray, so no worker outlives the run.
The plan comes from serve.plan_source:
  config     the experiment file (serve.replicas: the x_kj of each replica; serve.types its request types), the
             default: on one CPU machine the scheduler has little to choose (TP and PP replicas share the same cores);
  scheduler  serving.scheduler.oserve_search on the workload of the trace slice (serve.loadgen's slice and scaling,
             serve.plan_requests requests; serve.num_types k-means types) for serve.num_devices devices, with the
             engine's profile (serve.profile_path: profile.csv of an `experiment=oserve/calibrate` run) as the
             measured cost model. The plan is logged and recorded.
Writes requests.csv (per request TTFT / TPOT / e2e) when the load generator ran.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from common.datapaths import ensure_files, locate_data_dir
from common.stats import RequestTypes, fit_request_types
from common.topology import local_cpu
from common.traces import load_request_trace
from experiments.config import PlanSource
from experiments.tables import write_csv
from serving.costmodel.iteration import ReplicaConfig
from serving.costmodel.measured import load_perf_table
from serving.engines.config import EngineConfig
from serving.engines.profile import engine_cluster, model_spec, profile_cost_model
from serving.loadgen import LoadSpec, fit_trace, records_table, replay, summary
from serving.scheduler import Problem, SchedulerConfig, oserve_search
from serving.scheduler.plan import DeploymentPlan
from serving.workload import build_workload

log = logging.getLogger(__name__)


def plan_from_config(replicas, num_types: int, key: str = "serve.replicas") -> DeploymentPlan:
    """A DeploymentPlan from the experiment file's replica list (tp, pp, devices, dispatch x_kj) at `key`."""
    if not replicas:
        raise ValueError(f"{key}: the plan needs at least one replica")
    for k, r in enumerate(replicas):
        if len(r.dispatch) != num_types:
            raise ValueError(f"{key}.{k}.dispatch: {len(r.dispatch)} rates for {num_types} request types")
    x = np.array([[float(v) for v in r.dispatch] for r in replicas])
    rates = x.sum(axis=0)
    return DeploymentPlan(
        replicas=tuple(ReplicaConfig(int(r.tp), int(r.pp)) for r in replicas),
        devices=tuple(tuple(int(d) for d in r.devices) for r in replicas),
        dispatch=tuple(map(tuple, x.tolist())), type_rates=tuple(rates.tolist()), served_rps=float(x.sum()),
        peak_utilisation=0.0, utilisation=(0.0,) * len(replicas), policy="config")


def plan_from_scheduler(s, engine: EngineConfig, raw_trace) -> tuple[DeploymentPlan, RequestTypes]:
    """The scheduler's plan for the workload of the trace slice (serve.loadgen's scaling, serve.plan_requests
    requests) on serve.num_devices local devices, and the request types it was made for."""
    if not s.profile_path:
        raise ValueError("serve.profile_path: plan_source scheduler needs the engine's profile (profile.csv written "
                         "by `experiment=oserve/calibrate`)")
    trace = fit_trace(raw_trace, replace(OmegaConf.to_object(s.loadgen), num_requests=int(s.plan_requests)))
    wl = build_workload(trace, int(s.num_types), seed=0)
    # The same k-means as build_workload's (same points, k and seed): the router needs the centres it found.
    types = fit_request_types(trace.input_tokens, trace.output_tokens, k=wl.num_types, seed=0)
    sched: SchedulerConfig = OmegaConf.to_object(s.scheduler)
    spec = model_spec(engine.model, engine.dtype, engine.max_model_len)
    cluster = engine_cluster(int(s.num_devices), engine.kv_cache_gib * 2**30, spec, local_cpu())
    cm = profile_cost_model(load_perf_table(s.profile_path, fit_context=True), spec, cluster, engine.max_num_seqs,
                            sched.max_batched_tokens, engine.max_model_len)
    plan = oserve_search(Problem.from_workload(cm, wl, sched), int(s.num_devices))
    log.info("scheduler plan for %d requests (%.2f req/s, %d types) on %d devices: %s; x_kj %s", len(trace),
             len(trace) / max(trace.duration_s, 1e-9), wl.num_types, int(s.num_devices), plan.describe(),
             np.round(np.array(plan.dispatch), 3).tolist())
    return plan, types


def run(cfg: DictConfig, out_dir: Path) -> dict:
    from serving.engines.cluster import start_ray, stop_ray
    from serving.executor.service import Service, with_model
    from serving.tinymodel import default_cache_root

    s = cfg.serve
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    engine = with_model(OmegaConf.to_object(s.engine) if OmegaConf.is_config(s.engine) else EngineConfig(**s.engine),
                        default_cache_root(os.environ))
    spec: LoadSpec = OmegaConf.to_object(s.loadgen)
    source = s.plan_source
    raw = None
    if spec.num_requests > 0 or source is PlanSource.scheduler:
        data_dir = ensure_files(locate_data_dir(cfg.paths.data_dir, os.environ), [s.trace_path], cfg.paths.fallback,
                                synthetic_dir=out_dir / "synthetic_data").root
        raw = load_request_trace(Path(data_dir) / s.trace_path, s.trace_format)
    trace = fit_trace(raw, spec) if spec.num_requests > 0 else None
    if source is PlanSource.scheduler:
        plan, types = plan_from_scheduler(s, engine, raw)
    else:
        types = RequestTypes(np.log1p(np.array([[float(a), float(b)] for a, b in s.types])))
        plan = plan_from_config(s.replicas, types.num_types)
        log.info("plan from serve.replicas: %s", plan.describe())
    nxt = plan_from_config(s.switch_to, types.num_types, "serve.switch_to") if s.switch_to else None
    out: dict = {"model": engine.model, "plan": plan.describe(), "plan_source": source.name,
                 "dispatch": [list(r) for r in plan.dispatch]}

    async def main():
        svc = Service(engine, types, int(s.max_in_flight), model_name=s.model_name)
        t0 = time.perf_counter()
        try:
            url = await svc.start(plan, s.host, int(s.port))
            out["startup_s"] = time.perf_counter() - t0
            out["replicas"] = {r.name: {"placement_s": r.times.placement_s, "load_s": r.times.load_s,
                                        "warmup_s": r.times.warmup_s} for r in svc.executor.replicas}
            out["url"] = url
            print(f"loadwise router: {url}/v1 (model {s.model_name!r}); Ctrl-C stops", flush=True)
            log.info("router at %s/v1 serving %s", url, plan.describe())
            # Step 2: work whose results are recorded; Step 3: what ends the run.
            work = {}
            if trace is not None:
                work["load"] = asyncio.ensure_future(replay(url + "/v1", s.model_name, trace, spec))
            if nxt is not None:
                work["switch"] = asyncio.ensure_future(switch_later(svc, nxt, float(s.switch_after_s)))
            ends = []
            if trace is not None:
                ends.append(asyncio.ensure_future(asyncio.wait(list(work.values()))))
            if s.duration_s:
                ends.append(asyncio.ensure_future(asyncio.sleep(float(s.duration_s))))
            if s.max_requests:
                ends.append(asyncio.ensure_future(served_at_least(svc, int(s.max_requests))))
            if not ends:  # until Ctrl-C
                ends.append(asyncio.ensure_future(asyncio.Event().wait()))
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            for t in ends:
                t.cancel()
            for key, t in work.items():
                if not t.done():
                    t.cancel()
                    continue
                if t.exception() is not None:
                    raise t.exception()
                if key == "load":
                    out["load"] = summary(t.result())
                    write_records(out_dir / "requests.csv", t.result())
                else:
                    out["switch"] = dict(t.result().__dict__)
        finally:
            out["served"] = {f"type{j}@{name}": n for (j, name), n in sorted(svc.dispatcher.served.items())}
            await svc.stop()

    start_ray(num_cpus=int(s.num_cpus), address=s.ray_address)
    try:
        asyncio.run(main())
        out["stopped"] = "done"
    except KeyboardInterrupt:
        out["stopped"] = "interrupted"
        log.info("interrupted: replicas and router stopped")
    finally:
        stop_ray()
    return out


async def switch_later(svc, plan: DeploymentPlan, after_s: float):
    await asyncio.sleep(after_s)
    return await svc.apply(plan)


async def served_at_least(svc, n: int) -> None:
    while sum(svc.dispatcher.served.values()) < n:
        await asyncio.sleep(0.1)


def write_records(path: Path, records) -> None:
    write_csv(path, records_table(records))
