"""OServe spatial experiment: the heterogeneous plan vs. the best static homogeneous deployment.

    loadwise experiment=oserve/spatial

For every (trace, GPU count, request rate): OServe's two-level plan with its x_kj dispatch ("oserve"), the same
deployment with round-robin ("oserve_rr"), and the best homogeneous deployment (every replica alike, picked by P99 in
the same simulator at the middle rate) with round-robin ("static_vllm"), and a fixed vLLM-style deployment of
TP=oserve.fixed_tp replicas with round-robin ("static_tp<N>", when that config fits). Then a spatial-sensitivity sweep mixing short
and long requests at rising length CV. Returns the results (experiments.run writes results.json) and writes
results.csv, sensitivity.csv, p99_vs_rate.png.
"""

from __future__ import annotations

import csv
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
from serving.costmodel import CostModel, CostModelKind, ReplicaConfig, get_model, load_perf_table
from serving.scheduler import Capacity, Problem, SchedulerConfig, homogeneous_candidates, oserve_search
from serving.sim import SLO, Dispatcher, SimulatedProfiler, simulate
from serving.workload import build_workload, length_cv, mix_types

log = logging.getLogger(__name__)

PAPER = reference.load("oserve_paper.json")  # the paper's claims, with their source


def _data_path(data_dir: Path, rel: str) -> Path:
    p = Path(rel).expanduser()
    return p if p.is_absolute() else data_dir / p


def load_traces(cfg: DictConfig, data_dir: Path) -> dict[str, RequestTrace]:
    fmt = cfg.workload.format  # a TraceFormat, checked when the config was built
    if not cfg.workload.rate_scale > 0:
        raise ValueError(f"config key 'workload.rate_scale' must be > 0, got {cfg.workload.rate_scale}")
    names = [cfg.workload.trace_path] + list(cfg.oserve.extra_traces)
    out: dict[str, RequestTrace] = {}
    for rel in names:
        if rel == "mix":
            continue
        tr = load_request_trace(_data_path(data_dir, rel), fmt)
        if cfg.workload.max_requests:
            n = int(cfg.workload.max_requests)
            tr = RequestTrace(tr.arrival_s[:n], tr.input_tokens[:n], tr.output_tokens[:n], tr.source)
        out[Path(rel).stem.replace("AzureLLMInferenceTrace_", "")] = tr
    if "mix" in names and len(out) >= 2:
        a, b = list(out.values())[:2]
        t = np.concatenate([a.arrival_s, b.arrival_s])
        o = np.argsort(t, kind="stable")
        out["mix"] = RequestTrace(t[o], np.concatenate([a.input_tokens, b.input_tokens])[o],
                                  np.concatenate([a.output_tokens, b.output_tokens])[o], "mix")
    return out


def build_cost(cfg: DictConfig, data_dir: Path, num_gpus: int) -> CostModel:
    if num_gpus < 1:
        raise ValueError(f"config key 'num_gpus' must be >= 1, got {num_gpus}")
    cluster = get_cluster(cfg.cluster.preset, cfg.cluster.num_nodes, cfg.cluster.devices_per_node)
    if num_gpus > cluster.num_devices:
        raise ValueError(f"config key 'num_gpus': {num_gpus} > {cluster.num_devices} devices in cluster {cluster.name}")
    cluster = cluster.with_shape(-(-num_gpus // cluster.devices_per_node))
    kind = cfg.oserve.costmodel
    table = load_perf_table(_data_path(data_dir, cfg.oserve.perf_table)) if kind is CostModelKind.measured else None
    cm = CostModel(get_model(cfg.model), cluster, kind=kind, table=table, max_model_len=int(cfg.oserve.max_model_len))
    need = cm.min_gpus()  # a clear error now if the model cannot fit
    if need > num_gpus:
        raise ValueError(f"config key 'num_gpus': model {cfg.model} does not fit on {num_gpus} GPUs "
                         f"(a replica needs {need})")
    return cm


def library_config(node, cls):
    """The library dataclass a schema section nests (OmegaConf rebuilds it with the Enums already checked)."""
    obj = OmegaConf.to_object(node) if OmegaConf.is_config(node) else node
    return obj if isinstance(obj, cls) else cls(**obj)


def run_policy(trace, labels, cm, replicas, dispatch: Dispatcher, weights, cfg) -> dict:
    res = simulate(trace.arrival_s, trace.input_tokens, trace.output_tokens, labels, [cm.cost(c) for c in replicas],
                   dispatch, weights=weights, max_model_len=int(cfg.oserve.max_model_len),
                   slo=library_config(cfg.oserve.slo, SLO))
    return {**res.summary, "preemptions": int(res.preemptions.sum())}


def scheduler_problem(cm, wl, cfg) -> Problem:
    """The scheduler's problem for one workload; with capacity simulated, the simulator profiles n_kj (passed in)."""
    sched = library_config(cfg.oserve.scheduler, SchedulerConfig)
    profiler = None
    if sched.capacity is Capacity.simulated:
        profiler = SimulatedProfiler(ttft_target_s=float(cfg.oserve.slo.ttft_s) / 2, tpot_target_s=sched.tpot_target_s,
                                     max_batched_tokens=sched.max_batched_tokens, max_model_len=cm.max_model_len)
    return Problem.from_workload(cm, wl, sched, profiler=profiler)


def compare(trace, cm, gpus, cfg, static_dep=None) -> tuple[dict, tuple, object]:
    """The policies on one trace; returns (metrics per policy, the static deployment used, the OServe plan)."""
    q = cfg.oserve.plan_rate_quantile
    wl = build_workload(trace, int(cfg.workload.num_types), seed=int(cfg.seed),
                        rate_quantile=None if q is None else float(q))
    prob = scheduler_problem(cm, wl, cfg)
    plan = oserve_search(prob, gpus)
    if static_dep is None:  # best homogeneous by P99 in the same simulator
        cands = homogeneous_candidates(prob, gpus)
        p99 = [run_policy(trace, wl.labels, cm, d, Dispatcher.round_robin, None, cfg)["p99_latency_s"] for d in cands]
        static_dep = cands[int(np.argmin(p99))]
    res = {
        "oserve": run_policy(trace, wl.labels, cm, plan.replicas, Dispatcher.plan, np.array(plan.dispatch), cfg),
        "oserve_rr": run_policy(trace, wl.labels, cm, plan.replicas, Dispatcher.round_robin, None, cfg),
        "static_vllm": run_policy(trace, wl.labels, cm, static_dep, Dispatcher.round_robin, None, cfg),
    }
    tp = int(cfg.oserve.fixed_tp)
    if tp <= gpus and ReplicaConfig(tp) in cm.configs(tp):
        res[f"static_tp{tp}"] = run_policy(trace, wl.labels, cm, (ReplicaConfig(tp),) * (gpus // tp),
                                           Dispatcher.round_robin, None, cfg)
        res[f"static_tp{tp}"]["plan"] = f"{gpus // tp}x{ReplicaConfig(tp)}"
    res["oserve"]["plan"] = plan.describe()
    res["oserve"]["scheduler_s"] = plan.solve_time_s
    res["static_vllm"]["plan"] = " + ".join(sorted({f"{len(static_dep)}x{c}" for c in static_dep}))
    return res, static_dep, plan


def sensitivity(trace, cm, gpus, cfg) -> list[dict]:
    """Mix the shortest and the longest request type at rising shares; rate at 70% of the static plan's capacity."""
    wl = build_workload(trace, int(cfg.workload.num_types), seed=int(cfg.seed))
    order = np.argsort(wl.mean_input + wl.mean_output)
    pools = [RequestTrace(trace.arrival_s[wl.labels == j], trace.input_tokens[wl.labels == j],
                          trace.output_tokens[wl.labels == j], "pool") for j in (order[0], order[-1])]
    rows = []
    for p in tqdm(list(cfg.oserve.sensitivity_mix), desc="sensitivity", leave=False):
        probe = mix_types(pools, [1 - p, p], int(cfg.oserve.sensitivity_requests), 1.0, seed=int(cfg.seed))
        wl_p = build_workload(probe, int(cfg.workload.num_types), seed=int(cfg.seed))
        prob = scheduler_problem(cm, wl_p, cfg)
        # Rate: 70% of what the best homogeneous deployment serves of this mix (its LP capacity at rate 1).
        best = max(homogeneous_candidates(prob, gpus), key=prob.score)
        rate = 0.7 / max(-prob.score(best)[1], 1e-9)
        mixed = mix_types(pools, [1 - p, p], int(cfg.oserve.sensitivity_requests), rate, seed=int(cfg.seed))
        res, _, _ = compare(mixed, cm, gpus, cfg)
        rows.append({"long_share": p, "cv": length_cv(mixed), "rate_rps": rate,
                     "p99_static_s": res["static_vllm"]["p99_latency_s"], "p99_oserve_s": res["oserve"]["p99_latency_s"],
                     "speedup": res["static_vllm"]["p99_latency_s"] / res["oserve"]["p99_latency_s"]})
    return sorted(rows, key=lambda r: r["cv"])  # rising CV


def run(cfg: DictConfig, out_dir: Path) -> dict:
    t0 = time.perf_counter()
    needed = [cfg.workload.trace_path, *(t for t in cfg.oserve.extra_traces if t != "mix")]
    needed += [cfg.oserve.perf_table] if cfg.oserve.costmodel is CostModelKind.measured else []
    data_dir = ensure_files(locate_data_dir(cfg.paths.data_dir, os.environ), needed,
                            cfg.paths.fallback, synthetic_dir=out_dir / "synthetic_data").root
    traces = load_traces(cfg, data_dir)
    primary = next(iter(traces))
    gpu_counts = sorted(set(int(g) for g in cfg.oserve.gpu_counts) | {int(cfg.num_gpus)})
    grid, headline = [], None
    cells = [(name, g) for name in traces for g in gpu_counts]
    for name, g in tqdm(cells, desc="oserve grid"):
        cm = build_cost(cfg, data_dir, g)
        static_dep = None
        mid = float(np.median(cfg.oserve.rate_points))
        points = sorted(cfg.oserve.rate_points, key=lambda x: abs(x - mid))  # pick the static plan at the middle
        for pt in points:
            scale = float(cfg.workload.rate_scale) * float(pt) * g / 8
            tr = traces[name].scale_rate(scale)
            res, static_dep, plan = compare(tr, cm, g, cfg, static_dep)
            for pol, m in res.items():
                grid.append({"trace": name, "gpus": g, "rate_point": pt, "rate_rps": len(tr) / max(tr.duration_s, 1e-9),
                             "policy": pol, **{k: v for k, v in m.items() if k != "plan"}, "plan": m.get("plan", "")})
            if name == primary and g == int(cfg.num_gpus) and pt == points[0]:
                headline = res
    ratios, ratios_fixed = {}, {}
    fixed = f"static_tp{int(cfg.oserve.fixed_tp)}"
    for (name, g, pt) in {(r["trace"], r["gpus"], r["rate_point"]) for r in grid}:
        by = {r["policy"]: r for r in grid if (r["trace"], r["gpus"], r["rate_point"]) == (name, g, pt)}
        ratios[f"{name}/{g}/{pt}"] = by["static_vllm"]["p99_latency_s"] / by["oserve"]["p99_latency_s"]
        if fixed in by:
            ratios_fixed[f"{name}/{g}/{pt}"] = by[fixed]["p99_latency_s"] / by["oserve"]["p99_latency_s"]
    sens = sensitivity(traces[primary], build_cost(cfg, data_dir, int(cfg.num_gpus)), int(cfg.num_gpus), cfg)

    out = {
        "policies": {k: {kk: v for kk, v in m.items()} for k, m in headline.items()},
        "p99_speedup_vs_static": {"max": max(ratios.values()), "mean": float(np.mean(list(ratios.values()))),
                                  "per_cell": ratios},
        f"p99_speedup_vs_{fixed}": ({"max": max(ratios_fixed.values()), "mean": float(np.mean(list(ratios_fixed.values()))),
                                     "per_cell": ratios_fixed} if ratios_fixed else None),
        "sensitivity": sens,
        "paper": PAPER,
        "config": {"model": cfg.model, "cluster": cfg.cluster.preset.name, "num_gpus": int(cfg.num_gpus),
                   "costmodel": cfg.oserve.costmodel.name, "traces": list(traces)},
        "wall_s": time.perf_counter() - t0,
    }
    _write_csv(out_dir / "results.csv", grid)
    _write_csv(out_dir / "sensitivity.csv", sens)
    settings = {"model": cfg.model, "cluster": cfg.cluster.preset.name, "cost model": cfg.oserve.costmodel.name}
    _plot(out_dir / "p99_vs_rate.png", grid, traces, gpu_counts, fixed, settings)
    lines = [f"OServe spatial ({cfg.model}, {cfg.cluster.preset.name}, {cfg.oserve.costmodel.name} cost model)"]
    for k, m in headline.items():
        lines.append(f"  {k:13s} P50 {m['p50_latency_s']:8.2f} s  P99 {m['p99_latency_s']:8.2f} s  "
                     f"{m['throughput_rps']:6.2f} req/s  SLO {m['slo_attainment']:.3f}  {m.get('plan', '')}")
    s = out["p99_speedup_vs_static"]
    ps = PAPER["p99_speedup_vs_static"]
    lines.append(f"  P99 best-static/oserve: max {s['max']:.2f}x, mean {s['mean']:.2f}x   "
                 f"(paper: up to {ps['max']:g}x, average {ps['mean']:g}x vs vLLM)")
    if ratios_fixed:
        f = out[f"p99_speedup_vs_{fixed}"]
        lines.append(f"  P99 {fixed}/oserve: max {f['max']:.2f}x, mean {f['mean']:.2f}x")
    paper_sens = " .. ".join(f"{v:g}x at CV {k}" for k, v in PAPER["sensitivity_speedup_by_cv"].items())
    for r in sens:
        lines.append(f"  sensitivity CV {r['cv']:.3f}: {r['speedup']:.2f}x   (paper: {paper_sens})")
    log.info("\n".join(lines))
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _plot(path: Path, grid: list[dict], traces, gpu_counts, fixed: str, settings: dict) -> None:
    fig, axes = plotting.figure(len(traces), len(gpu_counts), "OServe spatial: P99 latency by request rate", settings)
    for i, name in enumerate(traces):
        for j, g in enumerate(gpu_counts):
            ax = axes[i, j]
            for idx, pol in enumerate(("oserve", "oserve_rr", "static_vllm", fixed)):
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
