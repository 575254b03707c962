"""OServe spatial experiment: the heterogeneous plan against honest homogeneous baselines.

    loadwise experiment=oserve/spatial

For every (trace, GPU count, request rate), in the same simulator (vLLM V1 scheduling by default):
  oserve             OServe's plan (flow/LP ranking, finalists scored on a short replay), affinity dispatch
  oserve_weighted    the same plan with the fixed x_kj split
  best_static        the oracle: the homogeneous deployment with the lowest simulated P99 (picked at the middle rate
                     point among the oserve.static_candidates best by the LP), least-outstanding routing;
                     best_static_rr with round-robin
  vllm_fixed_tp<N>   N_gpus / N identical TP-N replicas, least-outstanding routing (the paper's static vLLM);
                     vllm_fixed_tp<N>_rr with round-robin
Traces: workload.trace_path, oserve.extra_traces ("mix": the first two merged; "arxiv_mix": the first trace's arrivals
with oserve.arxiv_share of the lengths drawn from arXiv summarisation prompts). Then the spatial-sensitivity sweep and
the heatmap of P99 ratios over (share of long requests, load, SLO scale).
Returns the results (experiments.run writes results.json) and writes results.csv, sensitivity.csv, heatmap.csv,
p99_vs_rate.png, sensitivity.png, heatmap.png.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from common.datapaths import ensure_files, locate_data_dir
from common.topology import get_cluster
from common.traces import RequestTrace, load_request_trace
from experiments import plotting, reference
from experiments.config import require
from experiments.tables import headline_row, write_csv
from serving.costmodel import CostModel, CostModelKind, ReplicaConfig, get_model, load_perf_table
from serving.costmodel.calibrate import roofline_errors
from serving.costmodel.measured import hardware_key
from serving.scheduler import Capacity, Problem, SchedulerConfig, homogeneous_candidates, oserve_search
from serving.sim import SLO, Dispatcher, EngineConfig, ReplayScorer, SimulatedProfiler, simulate
from serving.workload import build_workload, length_cv, load_length_pool, mix_types, replace_lengths

log = logging.getLogger(__name__)

PAPER = reference.load("oserve_paper.json")  # the paper's claims, with their source
HEADLINE = ("oserve", "best_static")  # + the vllm_fixed_tp<N> policies


def _data_path(data_dir: Path, rel: str) -> Path:
    p = Path(rel).expanduser()
    return p if p.is_absolute() else data_dir / p


def check_config(cfg: DictConfig) -> None:
    """One-line errors naming the key, for values the schema's types cannot rule out."""
    o = cfg.oserve

    require(len(o.rate_points) > 0, "oserve.rate_points", "must list at least one rate point", list(o.rate_points))
    require(all(x > 0 for x in o.rate_points), "oserve.rate_points", "must all be > 0", list(o.rate_points))
    require(len(o.gpu_counts) > 0 and all(g >= 1 for g in o.gpu_counts), "oserve.gpu_counts",
            "must list GPU counts >= 1", list(o.gpu_counts))
    require(cfg.workload.num_types >= 1, "workload.num_types", "must be >= 1", cfg.workload.num_types)
    require(all(0 <= x <= 1 for x in o.sensitivity_mix), "oserve.sensitivity_mix", "must be shares in [0, 1]",
         list(o.sensitivity_mix))
    require(o.sensitivity_requests >= 10, "oserve.sensitivity_requests", "must be >= 10", o.sensitivity_requests)
    require(o.max_model_len >= 128, "oserve.max_model_len", "must be >= 128 tokens (shorter cannot hold the traces' "
         "requests)", o.max_model_len)
    require(o.slo.ttft_s > 0, "oserve.slo.ttft_s", "must be > 0", o.slo.ttft_s)
    require(o.slo.tpot_s > 0, "oserve.slo.tpot_s", "must be > 0", o.slo.tpot_s)
    s = o.scheduler
    require(s.patience >= 0, "oserve.scheduler.patience", "must be >= 0", s.patience)
    require(s.max_steps >= 1, "oserve.scheduler.max_steps", "must be >= 1", s.max_steps)
    require(s.finalists >= 0, "oserve.scheduler.finalists", "must be >= 0", s.finalists)
    require(0 <= s.headroom <= 1, "oserve.scheduler.headroom", "must lie in [0, 1]", s.headroom)
    require(s.tpot_target_s is None or s.tpot_target_s > 0, "oserve.scheduler.tpot_target_s", "must be > 0 or null",
         s.tpot_target_s)
    require(s.max_batched_tokens >= 1, "oserve.scheduler.max_batched_tokens", "must be >= 1", s.max_batched_tokens)
    require(o.replay_s >= 0, "oserve.replay_s", "must be >= 0", o.replay_s)
    require(all(t >= 1 and t & (t - 1) == 0 for t in o.fixed_tps), "oserve.fixed_tps",
         "must be powers of two (a TP degree divides a node)", list(o.fixed_tps))
    require(o.plan_rate_quantile is None or 0 <= o.plan_rate_quantile <= 1, "oserve.plan_rate_quantile",
         "must lie in [0, 1] or be null", o.plan_rate_quantile)
    require(o.plan_rate_window_s > 0, "oserve.plan_rate_window_s", "must be > 0", o.plan_rate_window_s)
    require(0 <= o.arxiv_share <= 1, "oserve.arxiv_share", "must lie in [0, 1]", o.arxiv_share)
    h = o.heatmap
    require(all(0 <= x <= 1 for x in h.long_shares), "oserve.heatmap.long_shares", "must be shares in [0, 1]",
         list(h.long_shares))
    require(all(x > 0 for x in h.loads), "oserve.heatmap.loads", "must all be > 0", list(h.loads))
    require(all(x > 0 for x in h.slo_scales), "oserve.heatmap.slo_scales", "must all be > 0", list(h.slo_scales))
    require(h.burst_cv > 0, "oserve.heatmap.burst_cv", "must be > 0", h.burst_cv)
    require(h.requests >= 10, "oserve.heatmap.requests", "must be >= 10", h.requests)
    for key in ("num_nodes", "devices_per_node"):
        v = cfg.cluster[key]
        require(v is None or v >= 1, f"cluster.{key}", "must be >= 1 or null", v)


def load_traces(cfg: DictConfig, data_dir: Path) -> dict[str, RequestTrace]:
    fmt = cfg.workload.format  # a TraceFormat, checked when the config was built
    if not cfg.workload.rate_scale > 0:
        raise ValueError(f"config key 'workload.rate_scale' must be > 0, got {cfg.workload.rate_scale}")
    names = [cfg.workload.trace_path] + list(cfg.oserve.extra_traces)
    out: dict[str, RequestTrace] = {}
    for rel in names:
        if rel in ("mix", "arxiv_mix"):
            continue
        tr = load_request_trace(_data_path(data_dir, rel), fmt)
        if cfg.workload.max_requests:
            n = int(cfg.workload.max_requests)
            tr = RequestTrace(tr.arrival_s[:n], tr.input_tokens[:n], tr.output_tokens[:n], tr.source)
        out[Path(rel).stem.replace("AzureLLMInferenceTrace_", "")] = tr
    first = next(iter(out.values()))
    if "mix" in names and len(out) >= 2:
        a, b = list(out.values())[:2]
        t = np.concatenate([a.arrival_s, b.arrival_s])
        o = np.argsort(t, kind="stable")
        out["mix"] = RequestTrace(t[o], np.concatenate([a.input_tokens, b.input_tokens])[o],
                                  np.concatenate([a.output_tokens, b.output_tokens])[o], "mix")
    if "arxiv_mix" in names:
        pool = load_length_pool(_data_path(data_dir, cfg.oserve.long_pool), "arxiv")
        out["arxiv_mix"] = replace_lengths(first, pool, float(cfg.oserve.arxiv_share), seed=int(cfg.seed))
    return out


def build_cost(cfg: DictConfig, data_dir: Path, num_gpus: int) -> CostModel:
    if num_gpus < 1:
        raise ValueError(f"config key 'num_gpus' must be >= 1, got {num_gpus}")
    cluster = get_cluster(cfg.cluster.preset, cfg.cluster.num_nodes, cfg.cluster.devices_per_node)
    if num_gpus > cluster.num_devices:
        raise ValueError(f"config key 'num_gpus': {num_gpus} > {cluster.num_devices} devices in cluster {cluster.name}")
    cluster = cluster.with_shape(-(-num_gpus // cluster.devices_per_node))
    kind = cfg.oserve.costmodel
    try:
        model = get_model(cfg.oserve.model)
    except ValueError as e:
        raise ValueError(f"config key 'oserve.model': {e}") from None
    table = None
    if kind is CostModelKind.measured:
        table = load_perf_table(_data_path(data_dir, cfg.oserve.perf_table))
        hw = hardware_key(cluster)
        if not any(k[0] == model.name and k[1] == hw for k in table.keys()):
            have = sorted({k[0] for k in table.keys() if k[1] == hw})
            raise ValueError(f"config key 'oserve.model': the measured table has no rows for {model.name} on {hw} (it has "
                             f"{have}); use oserve.costmodel=roofline")
    cm = CostModel(model, cluster, kind=kind, table=table, max_model_len=int(cfg.oserve.max_model_len))
    need = cm.min_gpus()  # a clear error now if the model cannot fit
    if need > num_gpus:
        raise ValueError(f"config key 'num_gpus': model {cfg.oserve.model} does not fit on {num_gpus} GPUs "
                         f"(a replica needs {need})")
    return cm


def library_config(node, cls):
    """The library dataclass a schema section nests (OmegaConf rebuilds it with the Enums already checked)."""
    obj = OmegaConf.to_object(node) if OmegaConf.is_config(node) else node
    return obj if isinstance(obj, cls) else cls(**obj)


def engine_config(cfg) -> EngineConfig:
    return EngineConfig(max_batched_tokens=int(cfg.oserve.scheduler.max_batched_tokens), policy=cfg.oserve.scheduling)


def run_policy(trace, labels, cm, replicas, dispatch: Dispatcher, weights, cfg, slo: SLO | None = None) -> dict:
    res = simulate(trace.arrival_s, trace.input_tokens, trace.output_tokens, labels, [cm.cost(c) for c in replicas],
                   dispatch, weights=weights, engine=engine_config(cfg), max_model_len=int(cfg.oserve.max_model_len),
                   slo=slo or library_config(cfg.oserve.slo, SLO))
    return {**res.summary, "preemptions": int(res.preemptions.sum())}


def scheduler_problem(cm, wl, cfg, slo: SLO | None = None, tpot_scale: float = 1.0) -> Problem:
    """The scheduler's problem for one workload. The simulator comes in as functions: the capacity profiler (with
    capacity simulated) and the finalists' replay scorer (with oserve.replay_s > 0)."""
    sched = library_config(cfg.oserve.scheduler, SchedulerConfig)
    if sched.tpot_target_s is not None and tpot_scale != 1.0:
        sched.tpot_target_s = sched.tpot_target_s * tpot_scale
    slo = slo or library_config(cfg.oserve.slo, SLO)
    profiler = None
    if sched.capacity is Capacity.simulated:
        profiler = SimulatedProfiler(ttft_target_s=float(slo.ttft_s) / 2, tpot_target_s=sched.tpot_target_s,
                                     max_batched_tokens=sched.max_batched_tokens, max_model_len=cm.max_model_len)
    scorer = None
    if float(cfg.oserve.replay_s) > 0 and sched.finalists > 0:
        tr = wl.trace
        scorer = ReplayScorer(tr.arrival_s, tr.input_tokens, tr.output_tokens, wl.labels, cm.cost,
                              window_s=float(cfg.oserve.replay_s), objective=cfg.oserve.replay_objective,
                              dispatch=cfg.oserve.dispatch, slo=slo, engine=engine_config(cfg),
                              max_model_len=cm.max_model_len)
    return Problem.from_workload(cm, wl, sched, profiler=profiler, scorer=scorer)


def _workload(trace, cfg):
    q = cfg.oserve.plan_rate_quantile
    return build_workload(trace, int(cfg.workload.num_types), seed=int(cfg.seed),
                          rate_quantile=None if q is None else float(q), interval_s=float(cfg.oserve.plan_rate_window_s))


def fixed_configs(cm, gpus: int, cfg) -> dict[str, ReplicaConfig]:
    """vllm_fixed_tp<N> for each oserve.fixed_tps entry that fits this GPU count and model (others are logged)."""
    out = {}
    for tp in cfg.oserve.fixed_tps:
        c = ReplicaConfig(int(tp))
        if tp <= gpus and c in cm.configs(int(tp)):
            out[f"vllm_fixed_tp{tp}"] = c
        else:
            log.warning("vllm_fixed_tp%d skipped at %d GPUs: TP %d does not hold %s here", tp, gpus, tp, cm.model.name)
    return out


def best_static(trace, labels, cm, prob: Problem, gpus: int, cfg, slo: SLO | None = None) -> tuple:
    """The oracle static deployment: the homogeneous one with the lowest simulated P99 on the whole trace
    (least-outstanding routing), among the oserve.static_candidates best by the LP (each is a full-trace
    simulation; 0: all of them)."""
    cands = sorted(homogeneous_candidates(prob, gpus), key=prob.score, reverse=True)
    if cfg.oserve.static_candidates:
        cands = cands[: int(cfg.oserve.static_candidates)]
    p99 = [run_policy(trace, labels, cm, d, Dispatcher.least_outstanding, None, cfg, slo)["p99_latency_s"]
           for d in cands]
    return cands[int(np.argmin(p99))]


def compare(trace, cm, gpus, cfg, static_dep=None, slo: SLO | None = None, tpot_scale: float = 1.0):
    """The policies on one trace; returns (metrics per policy, the static deployment used, the OServe plan)."""
    wl = _workload(trace, cfg)
    prob = scheduler_problem(cm, wl, cfg, slo, tpot_scale)
    plan = oserve_search(prob, gpus)
    lo, rr = Dispatcher.least_outstanding, Dispatcher.round_robin
    if static_dep is None:
        static_dep = best_static(trace, wl.labels, cm, prob, gpus, cfg, slo)
    weights = np.array(plan.dispatch)
    res = {
        "oserve": run_policy(trace, wl.labels, cm, plan.replicas, cfg.oserve.dispatch, weights, cfg, slo),
        "oserve_weighted": run_policy(trace, wl.labels, cm, plan.replicas, Dispatcher.plan, weights, cfg, slo),
        "best_static": run_policy(trace, wl.labels, cm, static_dep, lo, None, cfg, slo),
        "best_static_rr": run_policy(trace, wl.labels, cm, static_dep, rr, None, cfg, slo),
    }
    for name, c in fixed_configs(cm, gpus, cfg).items():
        dep = (c,) * (gpus // c.gpus)
        for suffix, d in (("", lo), ("_rr", rr)):
            res[name + suffix] = run_policy(trace, wl.labels, cm, dep, d, None, cfg, slo)
            res[name + suffix]["plan"] = f"{gpus // c.gpus}x{c}"
    res["oserve"]["plan"] = res["oserve_weighted"]["plan"] = plan.describe()
    res["oserve"]["scheduler_s"] = plan.solve_time_s
    res["oserve"]["candidates"] = [
        {"deployment": c.deployment, "served_share": c.served_share, "peak_utilisation": c.peak_utilisation,
         "replay_score": c.replay_score, "chosen": c.chosen} for c in plan.candidates]
    res["best_static"]["plan"] = res["best_static_rr"]["plan"] = f"{len(static_dep)}x{static_dep[0]}"
    return res, static_dep, plan


def sensitivity(trace, cm, gpus, cfg) -> list[dict]:
    """Mix the shortest and the longest request type at rising shares; rate at 70% of the static plan's capacity."""
    wl = build_workload(trace, int(cfg.workload.num_types), seed=int(cfg.seed))
    order = np.argsort(wl.mean_input + wl.mean_output)
    pools = [RequestTrace(trace.arrival_s[wl.labels == j], trace.input_tokens[wl.labels == j],
                          trace.output_tokens[wl.labels == j], "pool") for j in (order[0], order[-1])]
    rows = []
    for p in tqdm(list(cfg.oserve.sensitivity_mix), desc="sensitivity", leave=False):
        mixed = _mix_at_load(pools, p, 0.7, int(cfg.oserve.sensitivity_requests), cm, gpus, cfg, 1.0)
        res, _, _ = compare(mixed, cm, gpus, cfg)
        rows.append({"long_share": p, "cv": length_cv(mixed), "rate_rps": len(mixed) / max(mixed.duration_s, 1e-9),
                     "p99_static_s": res["best_static"]["p99_latency_s"],
                     "p99_oserve_s": res["oserve"]["p99_latency_s"],
                     "speedup": res["best_static"]["p99_latency_s"] / res["oserve"]["p99_latency_s"]})
    return sorted(rows, key=lambda r: r["cv"])  # rising CV


def _mix_at_load(pools, share, load, n, cm, gpus, cfg, burst_cv) -> RequestTrace:
    """A mix of the two pools at `load` x what the best homogeneous deployment serves of it (LP capacity, rate 1)."""
    probe = mix_types(pools, [1 - share, share], n, 1.0, seed=int(cfg.seed))
    prob = scheduler_problem(cm, build_workload(probe, int(cfg.workload.num_types), seed=int(cfg.seed)), cfg)
    prob.scorer = None
    best = max(homogeneous_candidates(prob, gpus), key=prob.score)
    rate = load / max(-prob.score(best)[1], 1e-9)
    return mix_types(pools, [1 - share, share], n, rate, seed=int(cfg.seed), burst_cv=burst_cv)


def heatmap(traces, data_dir, cfg, out_dir, settings) -> list[dict]:
    """P99 ratios best_static / oserve and vllm_fixed / oserve (> 1: OServe faster) over (long share, load, SLO)."""
    h = cfg.oserve.heatmap
    if not h.long_shares:
        return []
    gpus = int(h.gpus or cfg.num_gpus)
    cm = build_cost(cfg, data_dir, gpus)
    first = next(iter(traces.values()))
    pools = [first, load_length_pool(_data_path(data_dir, cfg.oserve.long_pool), "arxiv")]
    base = library_config(cfg.oserve.slo, SLO)
    rows = []
    cells = [(s, ld, sc) for sc in h.slo_scales for s in h.long_shares for ld in h.loads]
    for share, load, scale in tqdm(cells, desc="heatmap", leave=False):
        tr = _mix_at_load(pools, float(share), float(load), int(h.requests), cm, gpus, cfg, float(h.burst_cv))
        slo = SLO(ttft_s=base.ttft_s * scale, tpot_s=base.tpot_s * scale)
        res, _, _ = compare(tr, cm, gpus, cfg, slo=slo, tpot_scale=float(scale))
        row = {"long_share": share, "load": load, "slo_scale": scale, "rate_rps": len(tr) / max(tr.duration_s, 1e-9),
               "plan": res["oserve"]["plan"], "best_static_plan": res["best_static"]["plan"],
               "p99_oserve_s": res["oserve"]["p99_latency_s"], "p99_best_static_s": res["best_static"]["p99_latency_s"],
               "ratio_best_static": res["best_static"]["p99_latency_s"] / res["oserve"]["p99_latency_s"]}
        for k in res:
            if k.startswith("vllm_fixed") and not k.endswith("_rr"):
                row[f"ratio_{k}"] = res[k]["p99_latency_s"] / res["oserve"]["p99_latency_s"]
        rows.append(row)
    write_csv(out_dir / "heatmap.csv", rows)
    keys = [k for k in rows[0] if k.startswith("ratio_")]
    fig, axes = plotting.figure(len(h.slo_scales), len(keys), f"P99 ratio baseline / OServe ({gpus} GPUs; > 1: "
                                "OServe faster)", settings)
    for i, sc in enumerate(h.slo_scales):
        for j, k in enumerate(keys):
            grid = [[next(r[k] for r in rows if r["long_share"] == s and r["load"] == ld and r["slo_scale"] == sc)
                     for ld in h.loads] for s in h.long_shares]
            ax = axes[i, j]
            plotting.heatmap(ax, grid, list(h.loads), list(h.long_shares), k.replace("ratio_", "") + " / oserve",
                             center=1.0)
            ax.set_xlabel("load (share of best homogeneous capacity)")
            ax.set_ylabel("share of long (arXiv) requests")
            ax.set_title(f"{k.replace('ratio_', '')}, SLO x{sc:g}")
    plotting.save(fig, out_dir / "heatmap.png")
    return rows


def run(cfg: DictConfig, out_dir: Path) -> dict:
    t0 = time.perf_counter()
    check_config(cfg)
    needed = [cfg.workload.trace_path, *(t for t in cfg.oserve.extra_traces if t not in ("mix", "arxiv_mix"))]
    needed += [cfg.oserve.perf_table] if cfg.oserve.costmodel is CostModelKind.measured else []
    if "arxiv_mix" in cfg.oserve.extra_traces or cfg.oserve.heatmap.long_shares:
        needed.append(cfg.oserve.long_pool)
    data_dir = ensure_files(locate_data_dir(cfg.paths.data_dir, os.environ), needed,
                            cfg.paths.fallback, synthetic_dir=out_dir / "synthetic_data").root
    traces = load_traces(cfg, data_dir)
    primary = next(iter(traces))
    calibration = _calibration(cfg, data_dir)
    gpu_counts = sorted(set(int(g) for g in cfg.oserve.gpu_counts) | {int(cfg.num_gpus)})
    grid, headline, cells_out = [], None, {}
    mid = float(np.median(cfg.oserve.rate_points))
    points = sorted(cfg.oserve.rate_points, key=lambda x: abs(x - mid))  # the oracle is picked at the middle point
    for name, g in tqdm([(n, g) for n in traces for g in gpu_counts], desc="oserve grid"):
        cm = build_cost(cfg, data_dir, g)
        static_dep = None
        for pt in points:
            tr = traces[name].scale_rate(float(cfg.workload.rate_scale) * float(pt) * g / 8)
            res, static_dep, plan = compare(tr, cm, g, cfg, static_dep)
            for pol, m in res.items():
                grid.append({"trace": name, "gpus": g, "rate_point": pt,
                             "rate_rps": len(tr) / max(tr.duration_s, 1e-9), "policy": pol,
                             **{k: v for k, v in m.items() if k not in ("plan", "candidates")},
                             "plan": m.get("plan", "")})
            if pt == points[0]:
                cells_out[f"{name}/{g}"] = {k: {kk: v for kk, v in m.items()} for k, m in res.items()}
            if name == primary and g == int(cfg.num_gpus) and pt == points[0]:
                headline = res
    fixed = sorted({r["policy"] for r in grid if r["policy"].startswith("vllm_fixed") and not
                    r["policy"].endswith("_rr")})
    ratios = {b: {} for b in ["best_static", *fixed]}
    for (name, g, pt) in sorted({(r["trace"], r["gpus"], r["rate_point"]) for r in grid}):
        by = {r["policy"]: r for r in grid if (r["trace"], r["gpus"], r["rate_point"]) == (name, g, pt)}
        for b in ratios:
            if b in by:
                ratios[b][f"{name}/{g}/{pt}"] = by[b]["p99_latency_s"] / by["oserve"]["p99_latency_s"]
    settings = {"model": cfg.oserve.model, "cluster": cfg.cluster.preset.name, "cost model": cfg.oserve.costmodel.name,
                "engine": cfg.oserve.scheduling.name}
    sens = sensitivity(traces[primary], build_cost(cfg, data_dir, int(cfg.num_gpus)), int(cfg.num_gpus), cfg) \
        if cfg.oserve.sensitivity_mix else []
    heat = heatmap(traces, data_dir, cfg, out_dir, settings)

    summ = lambda v: {"max": max(v.values()), "mean": float(np.mean(list(v.values()))),  # noqa: E731
                      "min": min(v.values()), "per_cell": v} if v else None
    out = {
        "policies": headline,
        "cells": cells_out,
        **{f"p99_speedup_vs_{b}": summ(v) for b, v in ratios.items()},
        "sensitivity": sens,
        "heatmap": heat,
        "calibration": calibration,
        "paper": PAPER,
        "config": {"model": cfg.oserve.model, "cluster": cfg.cluster.preset.name, "num_gpus": int(cfg.num_gpus),
                   "costmodel": cfg.oserve.costmodel.name, "scheduling": cfg.oserve.scheduling.name,
                   "traces": list(traces)},
        "wall_s": time.perf_counter() - t0,
    }
    out["headline"] = headline_rows(out, ["best_static", *fixed])
    write_csv(out_dir / "results.csv", grid)
    write_csv(out_dir / "sensitivity.csv", sens)
    _plot(out_dir / "p99_vs_rate.png", grid, traces, gpu_counts, fixed, settings)
    if sens:
        _plot_sensitivity(out_dir / "sensitivity.png", sens, settings)
    log.info("\n".join(_table(out, cells_out, fixed, cfg)))
    return out


def headline_rows(out: dict, baselines: list[str]) -> list[dict]:
    """P99 speedup (baseline P99 / oserve P99) over the cells, mean and max, against each static baseline beside the
    paper's speedup over static vLLM; each sensitivity point beside the paper's point of nearest CV."""
    ps = PAPER["p99_speedup_vs_static"]
    rows = []
    for b in baselines:
        s = out.get(f"p99_speedup_vs_{b}")
        if s:
            cells = ", ".join(s["per_cell"])
            rows += [headline_row("OServe spatial", f"vs {b} ({cells})", "P99 speedup, mean", s["mean"], ps["mean"]),
                     headline_row("OServe spatial", f"vs {b} ({cells})", "P99 speedup, max", s["max"], ps["max"])]
    paper_sens = sorted((float(cv), x) for cv, x in PAPER["sensitivity_speedup_by_cv"].items())
    for r in out["sensitivity"]:
        cv, x = min(paper_sens, key=lambda p: abs(p[0] - r["cv"]))
        rows.append(headline_row("OServe spatial", f"sensitivity, CV {r['cv']:.2f} (paper's CV {cv:g})",
                                 "P99 speedup vs best_static", r["speedup"], x))
    return rows


def _calibration(cfg, data_dir) -> list[dict]:
    """The roofline's error against every measured (model, GPU, TP, phase), logged: how far the roofline terms the
    measured model borrows (context, PP, other models) can be trusted."""
    if cfg.oserve.costmodel is not CostModelKind.measured:
        return []
    rows = [dataclasses.asdict(e) for e in roofline_errors(load_perf_table(_data_path(data_dir, cfg.oserve.perf_table)))]
    log.info("roofline vs measured table (mean / worst abs. error):\n" + "\n".join(
        f"  {r['model']:11s} {r['hardware']:10s} TP{r['tp']} {r['phase']:7s} {r['mape']:6.1%} / {r['max_ape']:6.1%}"
        f"  ({r['rows']} rows)" for r in rows))
    return rows


def _table(out, cells, fixed, cfg) -> list[str]:
    """The headline: per trace x GPU count, P99 (s) and goodput (SLO-meeting req/s) of each policy, then ratios."""
    pols = [*HEADLINE, *fixed]
    ps = PAPER["p99_speedup_vs_static"]
    lines = [f"OServe spatial ({cfg.oserve.model}, {cfg.cluster.preset.name}, {cfg.oserve.costmodel.name} cost model, "
             f"{cfg.oserve.scheduling.name} engines); P99 s / goodput req/s; ratio = baseline P99 / oserve P99",
             f"  {'cell':18s}" + "".join(f"{p:>22s}" for p in pols) + "   oserve plan / best_static plan"]
    for key, res in cells.items():
        row = f"  {key:18s}"
        for p in pols:
            m = res.get(p)
            row += f"{m['p99_latency_s']:12.2f} /{m['goodput_rps']:7.2f}  " if m else f"{'-':>22s}"
        lines.append(row + f"   {res['oserve']['plan']} / {res['best_static']['plan']}")
    for b in ["best_static", *fixed]:
        s = out.get(f"p99_speedup_vs_{b}")
        if s:
            lines.append(f"  P99 {b}/oserve: mean {s['mean']:.2f}x, max {s['max']:.2f}x, min {s['min']:.2f}x"
                         f"   (paper vs static vLLM: mean {ps['mean']:g}x, up to {ps['max']:g}x)")
    paper_sens = " .. ".join(f"{v:g}x at CV {k}" for k, v in PAPER["sensitivity_speedup_by_cv"].items())
    for r in out["sensitivity"]:
        lines.append(f"  sensitivity CV {r['cv']:.3f}: {r['speedup']:.2f}x   (paper: {paper_sens})")
    for r in out["heatmap"]:
        lines.append(f"  heatmap long {r['long_share']:g} load {r['load']:g} SLO x{r['slo_scale']:g}: "
                     + ", ".join(f"{k[6:]} {v:.2f}x" for k, v in r.items() if k.startswith("ratio_"))
                     + f"   ({r['plan']} vs {r['best_static_plan']})")
    return lines


def _plot_sensitivity(path: Path, sens: list[dict], settings: dict) -> None:
    """The spatial-sensitivity sweep: P99 speedup over the best static deployment against the length CV of the mix,
    beside the paper's two published points."""
    fig, axes = plotting.figure(1, 1, "Spatial sensitivity: P99 best_static / OServe by length CV", settings,
                                panel_size=(6.0, 3.8))
    ax = axes[0, 0]
    rows = sorted(sens, key=lambda r: r["cv"])
    plotting.line(ax, [r["cv"] for r in rows], [r["speedup"] for r in rows], "ours (simulated)", index=0)
    for r in rows:
        ax.annotate(f"{r['long_share']:.0%} long", (r["cv"], r["speedup"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    paper = sorted((float(cv), x) for cv, x in PAPER["sensitivity_speedup_by_cv"].items())
    plotting.reference(ax, [cv for cv, _ in paper], [x for _, x in paper], "paper")
    plotting.hline(ax, 1.0)
    ax.set(xlabel="coefficient of variation of request length", ylabel="P99 speedup (x)")
    plotting.legend(ax)
    plotting.save(fig, path)


def _plot(path: Path, grid: list[dict], traces, gpu_counts, fixed, settings: dict) -> None:
    fig, axes = plotting.figure(len(traces), len(gpu_counts), "OServe spatial: P99 latency by request rate", settings)
    for i, name in enumerate(traces):
        for j, g in enumerate(gpu_counts):
            ax = axes[i, j]
            for idx, pol in enumerate(("oserve", "oserve_weighted", "best_static", *fixed)):
                rows = sorted((r for r in grid if r["trace"] == name and r["gpus"] == g and r["policy"] == pol),
                              key=lambda r: r["rate_rps"])
                if rows:
                    plotting.line(ax, [r["rate_rps"] for r in rows], [r["p99_latency_s"] for r in rows], pol,
                                  index=idx)
            ax.set_title(f"{name}, {g} GPUs")
            ax.set_xlabel("request rate (req/s)")
            ax.set_ylabel("P99 latency (s)")
            ax.set_yscale("log")
            plotting.legend(ax)
    plotting.save(fig, path)
