"""OServe performance benchmark and the cross-check against a peer simulator (Vidur).

    loadwise experiment=oserve/bench

1. Scheduler speed: the two-level search at bench.scheduler_gpus H100s (llama2-70b, measured cost model), and brute
   force at the smallest count (its gap to the search).
2. Simulator speed: the 19,366-request Azure conv hour on the largest deployment, per dispatcher.
3. Peer check: the setting of the reference file (experiments/reference/vidur.json: llama2-70b on 16 A100s as 4 x TP4
   and 2 x TP8, round-robin, prompts cut to 4,096 tokens), replayed with each cost model; every figure gets a verdict:
   agrees within the reference's tolerance, or differs, with the known reasons the file lists.
4. The roofline cost model's error against the measured one on the measured points.
Returns the report (experiments.run writes results.json) and writes bench_oserve.csv (timings), peer_check.csv
(verdicts) and bench_oserve.png. Timings are wall-clock and process CPU time on whatever else the machine is doing.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from common.datapaths import ensure_files, locate_data_dir
from common.topology import get_cluster, h100_80g_4x8
from common.traces import RequestTrace, load_request_trace
from experiments import plotting, reference
from experiments.tables import write_csv
from serving.costmodel import CostModel, CostModelKind, ReplicaConfig, get_model, load_perf_table
from serving.costmodel.calibrate import roofline_errors
from serving.scheduler import Problem, brute_force, oserve_search
from serving.sim import Dispatcher, simulate
from serving.workload import build_workload

log = logging.getLogger(__name__)

# Targets set for our implementation (simulator and scheduler speed at 32 GPUs); the paper's figure is beside them.
TARGETS = {"simulator_32_gpus_s": 10.0, "scheduler_32_gpus_s": 1.0}
PAPER = reference.load("oserve_paper.json")
PEER_METRICS = ("p50_latency_s", "p99_latency_s", "p50_ttft_s", "p99_ttft_s")


class Timer:
    """Wall-clock and process CPU seconds of a block (the machine is shared: CPU time is the steadier figure)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def verdict(ours: float, theirs: float, tolerance: float) -> tuple[bool, float]:
    """(agrees, ours / theirs): agreement means within `tolerance` relative to the reference figure."""
    ratio = ours / theirs
    return bool(abs(ratio - 1.0) <= tolerance), float(ratio)


def known_reasons(ref: dict, deployment: str, metric: str, costmodel: str) -> list[str]:
    return [d["reason"] for d in ref.get("known_differences", [])
            if deployment in d["deployments"] and metric in d["metrics"] and costmodel in d["costmodels"]]


def _first(trace: RequestTrace, n: int | None) -> RequestTrace:
    if n is None:
        return trace
    return RequestTrace(trace.arrival_s[:n], trace.input_tokens[:n], trace.output_tokens[:n], trace.source)


def speed_rows(b, trace, table) -> tuple[list[dict], dict]:
    """Steps 1 and 2: scheduler and simulator timings."""
    rows, report = [], {}
    gpus = sorted(int(g) for g in b.scheduler_gpus)
    nodes = -(-max(gpus) // 8)
    h100 = CostModel(get_model(b.model), h100_80g_4x8().with_shape(max(nodes, 1)), kind=CostModelKind.measured,
                     table=table)
    for g in gpus:
        tr = trace.scale_rate(float(b.rate_scale) * g / max(gpus))
        wl = build_workload(tr, int(b.num_types))
        prob = Problem.from_workload(h100, wl)
        with Timer() as t:
            plan = oserve_search(prob, g)
        if g == gpus[0]:
            with Timer() as tb:
                bf = brute_force(Problem.from_workload(h100, wl), g)
            same = round(bf.served_rps, 6) == round(plan.served_rps, 6)
            gap = plan.peak_utilisation / bf.peak_utilisation if same and bf.peak_utilisation > 0 else None
            rows.append({"what": f"brute force {g} GPUs", "wall_s": tb.wall, "cpu_s": tb.cpu,
                         "detail": f"{bf.describe()}; {bf.evaluations} deployments; peak util "
                                   f"{bf.peak_utilisation:.3f}; search/optimum peak util "
                                   f"{'n/a' if gap is None else f'{gap:.4f}'}"})
        rows.append({"what": f"scheduler {g} GPUs", "wall_s": t.wall, "cpu_s": t.cpu,
                     "detail": f"{plan.describe()}; {plan.steps} steps, {plan.evaluations} dispatch solves; "
                               f"peak util {plan.peak_utilisation:.3f}"})
        last = (plan, tr, wl)
    plan, tr, wl = last
    costs = [h100.cost(c) for c in plan.replicas]
    for disp in Dispatcher:
        with Timer() as t:
            res = simulate(tr.arrival_s, tr.input_tokens, tr.output_tokens, wl.labels, costs, disp,
                           weights=np.array(plan.dispatch))
        s = res.summary
        rows.append({"what": f"simulator {plan.num_gpus} GPUs, {len(tr)} requests, {disp.name}", "wall_s": t.wall,
                     "cpu_s": t.cpu, "detail": f"{sum(res.iterations)} iterations; P50 {s['p50_latency_s']:.2f} s, "
                                               f"P99 {s['p99_latency_s']:.2f} s"})
    report["targets"] = {**TARGETS, "paper_scheduler_s": PAPER["scheduler_s"]}
    return rows, report


def peer_rows(b, ref: dict, trace: RequestTrace, table) -> list[dict]:
    """Step 3: the reference setting replayed per cost model, one row per (deployment, cost model, metric)."""
    st = ref["setting"]
    tol = float(ref["agree_within"])
    labels = np.zeros(len(trace), np.int64)  # round-robin ignores types
    rows = []
    for kind in b.peer_costmodels:
        cm = CostModel(get_model(st["model"]), get_cluster(st["cluster"]), kind=kind, table=table,
                       max_model_len=int(st["max_model_len"]))
        for name, dep in ref["deployments"].items():
            with Timer() as t:
                res = simulate(trace.arrival_s, trace.input_tokens, trace.output_tokens, labels,
                               [cm.cost(ReplicaConfig(int(dep["tp"])))] * int(dep["replicas"]),
                               Dispatcher[st["dispatch"]], max_model_len=int(st["max_model_len"]))
            s = res.summary
            for metric in PEER_METRICS:
                theirs = dep["figures"].get(metric)
                row = {"deployment": name, "costmodel": kind.name, "metric": metric, "ours": s[metric],
                       "reference": theirs, "ratio": None, "verdict": "no reference figure", "reasons": "",
                       "replay_wall_s": t.wall, "replay_cpu_s": t.cpu, "p50_tpot_s": s["p50_tpot_s"]}
                if theirs is not None:
                    agrees, ratio = verdict(s[metric], float(theirs), tol)
                    row["ratio"] = ratio
                    if agrees:
                        row["verdict"] = f"agrees within {tol:.0%}"
                    else:
                        reasons = known_reasons(ref, name, metric, kind.name)
                        row["verdict"] = f"differs (ours {ratio:.2f}x)" + ("" if reasons else "; no known reason")
                        row["reasons"] = " | ".join(reasons)
                rows.append(row)
    return rows


def run(cfg: DictConfig, out_dir: Path) -> dict:
    b = cfg.bench
    ref = reference.load(b.reference)
    needed = [b.trace_path, b.perf_table, ref["setting"]["trace"]]
    data = ensure_files(locate_data_dir(cfg.paths.data_dir, os.environ), needed, cfg.paths.fallback,
                        synthetic_dir=out_dir / "synthetic_data").root
    table = load_perf_table(data / b.perf_table)
    trace = _first(load_request_trace(data / b.trace_path, "azure"), b.max_requests)
    peer_trace = trace if ref["setting"]["trace"] == b.trace_path else _first(
        load_request_trace(data / ref["setting"]["trace"], "azure"), b.max_requests)

    rows, report = speed_rows(b, trace, table)
    peer = peer_rows(b, ref, peer_trace, table)
    errs = roofline_errors(table)  # step 4
    for e in errs:
        rows.append({"what": f"roofline error {e.model} {e.hardware} tp{e.tp} {e.phase}", "wall_s": float("nan"),
                     "cpu_s": float("nan"), "detail": f"mean {e.mape:.1%}, worst {e.max_ape:.1%} over {e.rows} points"})
    report.update({"rows": rows, "peer_check": peer, "roofline_error": [e.__dict__ for e in errs],
                   "reference": {"peer": ref["peer"], "source": ref["source"], "setting": ref["setting"],
                                 "agree_within": ref["agree_within"], "replay_wall_s": ref.get("replay_wall_s")},
                   "requests": len(trace)})
    write_csv(out_dir / "bench_oserve.csv", rows)
    write_csv(out_dir / "peer_check.csv", peer)
    _plot(out_dir / "bench_oserve.png", rows, peer, ref)
    log.info(_table(rows, peer, ref))
    return report


def _table(rows: list[dict], peer: list[dict], ref: dict) -> str:
    width = max(len(r["what"]) for r in rows)
    out = [f"{'what':{width}s}  wall s   CPU s  detail"]
    out += [f"{r['what']:{width}s}  {r['wall_s']:6.2f}  {r['cpu_s']:6.2f}  {r['detail']}" for r in rows]
    out.append(f"targets: simulator <= {TARGETS['simulator_32_gpus_s']:g} s and scheduler <= "
               f"{TARGETS['scheduler_32_gpus_s']:g} s at 32 GPUs; the OServe paper's scheduler: "
               f"{PAPER['scheduler_s']['seconds']:g} s for {PAPER['scheduler_s']['gpus']} GPUs")
    st = ref["setting"]
    out.append(f"peer check against {ref['peer']}: {st['model']} on {st['gpus']} GPUs ({st['cluster']}), "
               f"{st['dispatch']}, max_model_len {st['max_model_len']}; {ref['peer'].split()[0]} took "
               f"~{ref.get('replay_wall_s', float('nan')):g} s per replay")
    reasons = list(dict.fromkeys(x for r in peer for x in r["reasons"].split(" | ") if x))
    for r in peer:
        if r["reference"] is None:
            continue
        why = [str(reasons.index(x) + 1) for x in r["reasons"].split(" | ") if x]
        out.append(f"  {r['deployment']} {r['costmodel']:8s} {r['metric']:14s} ours {r['ours']:7.2f}  "
                   f"ref {r['reference']:6.2f}  {r['verdict']}" + (f", reasons {','.join(why)}" if why else "")
                   + f"  (replay {r['replay_wall_s']:.1f} s wall, {r['replay_cpu_s']:.1f} s CPU)")
    out += ["  known reasons (this project's analysis):"] + [f"   {i + 1}. {x}" for i, x in enumerate(reasons)]
    return "\n".join(out)


def _plot(path: Path, rows: list[dict], peer: list[dict], ref: dict) -> None:
    st = ref["setting"]
    deps = list(ref["deployments"])
    fig, axes = plotting.figure(1, len(deps) + 1, "OServe simulator: peer check and speed",
                                {"model": st["model"], "cluster": st["cluster"], "peer": ref["peer"].split()[0]})
    for i, name in enumerate(deps):
        ax = axes[0, i]
        x = np.arange(len(PEER_METRICS))
        for idx, kind in enumerate(dict.fromkeys(r["costmodel"] for r in peer)):
            ys = [next(r["ours"] for r in peer if (r["deployment"], r["costmodel"], r["metric"]) == (name, kind, m))
                  for m in PEER_METRICS]
            plotting.line(ax, x, ys, f"ours ({kind})", index=idx)
        figs = ref["deployments"][name]["figures"]
        have = [j for j, m in enumerate(PEER_METRICS) if m in figs]
        plotting.reference(ax, x[have], [figs[PEER_METRICS[j]] for j in have], ref["peer"].split()[0])
        ax.set_xticks(x, [m.replace("_latency_s", " e2e").replace("_ttft_s", " TTFT") for m in PEER_METRICS])
        ax.set_yscale("log")
        ax.set_ylabel("seconds")
        ax.set_title(f"{name}: within {float(ref['agree_within']):.0%} counts as agreement")
        plotting.legend(ax)
    ax = axes[0, -1]
    timed = [r for r in rows if not np.isnan(r["wall_s"])]
    y = np.arange(len(timed))
    ax.barh(y - 0.2, [r["wall_s"] for r in timed], height=0.4, label="wall")
    ax.barh(y + 0.2, [r["cpu_s"] for r in timed], height=0.4, label="CPU")
    ax.set_yticks(y, [r["what"] for r in timed], fontsize=7)
    ax.axvline(TARGETS["simulator_32_gpus_s"], color="gray", linestyle="--", linewidth=0.8,
               label=f"simulator target {TARGETS['simulator_32_gpus_s']:g} s")
    ax.set_xscale("log")
    ax.set_xlabel("seconds")
    ax.set_title("speed (this machine)")
    plotting.legend(ax)
    plotting.save(fig, path)
