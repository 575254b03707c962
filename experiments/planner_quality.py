"""Planner quality on the real SmartMoE expert-load trace (the LAER-MoE paper's planner study, plus our LAER+).

For every sampled (iteration, layer, micro-batch) t and every planner and C:
  lagged: plan from the sum of the previous `window` micro-batches of that layer (iteration-major sequence), apply the
          plan to micro-batch t (FSEP rule, or the plan's routing as quotas);
  oracle: plan and evaluate on micro-batch t.
The cluster shape comes from `cluster`: devices per node from cluster.devices_per_node (else
planner_quality.devices_per_node), nodes from cluster.num_nodes (else as many as the trace's source ranks fill); a
device count below the trace's ranks replays merged ranks (each device sends what R/N original ranks sent).
Writes rows.csv (one row per instance, appended as each C finishes), summary.csv / summary.json (per planner, C,
mode; rewritten after each C), quality.png, and the MILP study's milp_rows.csv / milp_summary.csv.
Solve times exclude first-call costs (numba compilation, caches): every planner plans one instance untimed first.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from common.datapaths import ensure_files, locate_data_dir
from common.topology import get_cluster
from common.traces import ExpertLoadTrace, load_expert_trace
from training.planner import PlanObjective, make_planner, replica_lower_bound
from training.planner.evaluate import evaluate

log = logging.getLogger(__name__)


def load_counts(path: Path) -> np.ndarray:
    """counts [I, R, L, M, E] int64 from the SmartMoE npz."""
    return load_expert_trace(path).counts.astype(np.int64)


def cluster_shape(cfg: DictConfig, trace_ranks: int) -> tuple[int, int]:
    """(devices N, devices per node G) of the study from cfg.cluster (and planner_quality.devices_per_node when the
    cluster leaves it unset). N must divide the trace's source ranks: the trace is replayed on N devices."""
    pc, cl = cfg.planner_quality, cfg.cluster
    g = int(cl.devices_per_node) if cl.devices_per_node is not None else int(pc.devices_per_node)
    key = "cluster.devices_per_node" if cl.devices_per_node is not None else "planner_quality.devices_per_node"
    if g < 1:
        raise ValueError(f"config key '{key}' must be >= 1, got {g}")
    if cl.num_nodes is None:
        if trace_ranks % g:
            raise ValueError(f"config key '{key}'={g} does not divide the trace's {trace_ranks} source ranks")
        return trace_ranks, g
    nodes = int(cl.num_nodes)
    if nodes < 1 or trace_ranks % (nodes * g):
        raise ValueError(f"config keys 'cluster.num_nodes'={cl.num_nodes} x '{key}'={g} = {nodes * g} devices: the "
                         f"device count must divide the trace's {trace_ranks} source ranks (the trace is replayed on "
                         f"them, ranks merged)")
    return nodes * g, g


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["algorithm"], r["C"], r["mode"]) for r in rows})
    for alg, c, mode in keys:
        sel = [r for r in rows if (r["algorithm"], r["C"], r["mode"]) == (alg, c, mode)]
        mm = np.array([r["max_over_mean"] for r in sel])
        mb = np.array([r["max_over_bound"] for r in sel])
        st = np.array([r["solve_s"] for r in sel])
        gaps = [r["gap"] for r in sel if r["gap"] != ""]
        out.append({
            "algorithm": alg, "C": c, "mode": mode, "instances": len(sel),
            "mean_max_over_mean": float(mm.mean()), "p95_max_over_mean": float(np.percentile(mm, 95)),
            "mean_max_over_bound": float(mb.mean()), "mean_est_time_ms": float(np.mean([r["est_time_s"] for r in sel]) * 1e3),
            "mean_solve_ms": float(st.mean() * 1e3), "max_solve_ms": float(st.max() * 1e3),
            "mean_gap": float(np.mean(gaps)) if gaps else "", "max_gap": float(np.max(gaps)) if gaps else "",
        })
    return out


def run(cfg: DictConfig, out_dir: Path) -> dict:
    pc = cfg.planner_quality
    for key in ("window", "iteration_stride", "layer_stride"):
        if int(pc[key]) < 1:
            raise ValueError(f"config key 'planner_quality.{key}' must be >= 1, got {pc[key]}")
    out_dir = Path(out_dir)
    files = ensure_files(locate_data_dir(cfg.paths.data_dir, os.environ), [pc.expert_trace],
                         cfg.paths.fallback, synthetic_dir=out_dir / "synthetic_data")
    trace = load_expert_trace(files.path(pc.expert_trace))
    ranks, g = cluster_shape(cfg, trace.num_ranks)
    if ranks != trace.num_ranks:
        trace = trace.merge_ranks(ranks)
    iters, _, layers, mbs, e = trace.counts.shape
    cluster = get_cluster(cfg.cluster.preset).with_shape(ranks // g, g)
    cost = PlanObjective.for_model(cluster, hidden=pc.hidden, ffn=pc.ffn, recompute=pc.recompute)
    window = int(pc.window)

    # Instances: micro-batch positions t in each layer's iteration-major sequence with a full window before them.
    ts = [i * mbs + m for i in range(0, iters, int(pc.iteration_stride)) for m in range(mbs) if i * mbs + m >= window]
    lays = list(range(0, layers, int(pc.layer_stride)))
    instances = [(t, layer) for layer in lays for t in ts]
    if not instances:
        raise ValueError(f"config key 'planner_quality.window'={window}: no sampled micro-batch has a full window")
    log.info("planner_quality: %d instances x C in %s x %s on %d devices (%d per node); writing to %s",
             len(instances), list(pc.slots), list(pc.algorithms), ranks, g, out_dir)

    rows: list[dict] = []
    summary: list[dict] = []
    for ci, c in enumerate(pc.slots):
        planners = {}
        for name in pc.algorithms:
            if name == "static_ep" and ranks * c != e:
                continue  # plain EP has exactly E/N slots per device
            planners[name] = make_planner(name, ranks, int(c), g, objective=cost)
        new = _quality_rows(trace, instances, planners, int(c), window, g, cost)
        rows += new
        summary = summarise(rows)
        _write_csv(out_dir / "rows.csv", new, append=ci > 0)
        _write_csv(out_dir / "summary.csv", summary)
        (out_dir / "summary.json").write_text(json.dumps({"quality": summary, "milp": []}, indent=1))
        log.info("C=%d done: %d rows appended to %s; summary so far in %s", c, len(new), out_dir / "rows.csv",
                 out_dir / "summary.csv")
    _plot(rows, list(pc.slots), out_dir / "quality.png")
    log.info("%s", _format(summary))
    milp_rows, milp_summary = milp_study(trace.counts, pc, cost, cfg.cluster.preset)
    if milp_rows:
        _write_csv(out_dir / "milp_rows.csv", milp_rows)
        _write_csv(out_dir / "milp_summary.csv", milp_summary)
        log.info("%s", _format_milp(milp_summary))
    (out_dir / "summary.json").write_text(json.dumps({"quality": summary, "milp": milp_summary}, indent=1))
    log.info("wrote %s: rows.csv, summary.csv, summary.json, quality.png%s", out_dir,
             ", milp_rows.csv, milp_summary.csv" if milp_rows else "")
    return {"summary": summary, "milp": milp_summary, "instances": len(instances)}


def _quality_rows(trace: ExpertLoadTrace, instances: list[tuple[int, int]], planners: dict, c: int, window: int,
                  g: int, cost: PlanObjective) -> list[dict]:
    """One row per (instance, planner, mode) at C = c; one progress bar over the instances (each runs every planner
    in both modes, so instances cost alike and the bar's estimate holds)."""
    ranks, mbs = trace.num_ranks, trace.num_microbatches
    first_t, first_layer = instances[0]
    for planner in planners.values():  # untimed first call: numba compilation and caches stay out of solve_s
        planner.plan(trace.microbatch(first_layer, first_t))
    rows = []
    for t, layer in tqdm(instances, desc=f"planner_quality C={c}", unit="inst"):
        now = trace.microbatch(layer, t)
        past = trace.window_sum(layer, t, window)
        bound = replica_lower_bound(now, ranks, c)
        mean = now.sum() / ranks
        for name, planner in planners.items():
            for mode in ("oracle", "lagged"):
                t0 = time.perf_counter()
                plan = planner.plan(now if mode == "oracle" else past)
                solve = time.perf_counter() - t0
                if mode == "oracle":
                    tokens, est = plan.device_tokens, plan.est_time_s
                else:
                    tokens, est = evaluate(plan, now, g, cost)
                rows.append({
                    "algorithm": name, "C": c, "mode": mode, "iteration": t // mbs, "microbatch": t % mbs,
                    "layer": layer, "max_over_mean": float(tokens.max() / mean),
                    "max_over_bound": float(tokens.max() / bound), "est_time_s": float(est), "solve_s": solve,
                    "gap": "" if plan.gap is None else float(plan.gap),
                })
    return rows


def milp_study(counts: np.ndarray, pc, cost: PlanObjective, preset: str) -> tuple[list[dict], list[dict]]:
    """Every heuristic against the exact MILP on small instances cut from the trace (oracle mode)."""
    iters, ranks, layers, mbs, e = counts.shape
    n, g, e_small = int(pc.milp_devices), int(pc.milp_devices_per_node), int(pc.milp_experts)
    if pc.milp_instances < 1:
        return [], []
    if ranks % n or e % e_small or n % g:
        raise ValueError(f"config keys 'planner_quality.milp_*': {ranks} ranks / {e} experts do not merge into "
                         f"{n} devices (nodes of {g}) / {e_small} experts")
    cost = PlanObjective.for_model(get_cluster(preset).with_shape(n // g, g), hidden=pc.hidden, ffn=pc.ffn,
                              recompute=pc.recompute)
    rng = np.random.default_rng(0)
    picks = [(int(rng.integers(iters)), int(rng.integers(layers)), int(rng.integers(mbs))) for _ in range(pc.milp_instances)]
    rows = []
    algs = [a for a in pc.algorithms if a != "static_ep"]

    def small(it, layer, mb):  # [n, E_small]
        return counts[it, :, layer, mb].reshape(n, ranks // n, e_small, e // e_small).sum((1, 3))

    bar = tqdm(total=len(picks) * len(pc.milp_slots), desc="milp oracle", unit="inst")
    for c in pc.milp_slots:
        if n * int(c) < e_small:
            raise ValueError(f"config key 'planner_quality.milp_slots': C={c} gives fewer slots than {e_small} experts")
        milp = make_planner("milp", n, int(c), g, objective=cost, time_limit_s=pc.milp_time_limit_s)
        heur = {a: make_planner(a, n, int(c), g, objective=cost) for a in algs}
        for p in heur.values():  # untimed first call: numba compilation and caches stay out of solve_s
            p.plan(small(*picks[0]))
        for it, layer, mb in picks:
            x = small(it, layer, mb)
            t0 = time.perf_counter()
            opt = milp.plan(x)
            solve = time.perf_counter() - t0
            bound = replica_lower_bound(x, n, int(c))
            rows.append({"algorithm": "milp", "C": int(c), "iteration": it, "layer": layer, "microbatch": mb,
                         "est_time_s": opt.est_time_s, "over_milp": 1.0, "max_over_bound": opt.device_tokens.max() / bound,
                         "gap": opt.gap, "solve_s": solve})
            for a, p in heur.items():
                t0 = time.perf_counter()
                plan = p.plan(x)
                solve = time.perf_counter() - t0
                rows.append({"algorithm": a, "C": int(c), "iteration": it, "layer": layer, "microbatch": mb,
                             "est_time_s": plan.est_time_s, "over_milp": plan.est_time_s / opt.est_time_s,
                             "max_over_bound": plan.device_tokens.max() / bound, "gap": "", "solve_s": solve})
            bar.update()
    bar.close()
    summary = []
    for a in ["milp"] + algs:
        for c in pc.milp_slots:
            sel = [r for r in rows if r["algorithm"] == a and r["C"] == int(c)]
            ratio = np.array([r["over_milp"] for r in sel])
            gaps = [r["gap"] for r in rows if r["algorithm"] == "milp" and r["C"] == int(c)]
            summary.append({
                "algorithm": a, "C": int(c), "instances": len(sel), "mean_over_milp": float(ratio.mean()),
                "max_over_milp": float(ratio.max()), "within_5pct": float(np.mean(ratio <= 1.05)),
                "mean_max_over_bound": float(np.mean([r["max_over_bound"] for r in sel])),
                "mean_solve_ms": float(np.mean([r["solve_s"] for r in sel]) * 1e3),
                "milp_mean_gap": float(np.mean(gaps)), "milp_proven_optimal": float(np.mean(np.array(gaps) <= 1e-4)),
            })
    return rows, summary


def _format_milp(summary: list[dict]) -> str:
    lines = [f"\nMILP oracle on small trace instances\n{'algorithm':10s} {'C':>2s} {'n':>4s} {'obj/milp':>9s} "
             f"{'max':>7s} {'<=5%':>6s} {'/bound':>7s} {'solve ms':>9s} {'milp gap':>9s} {'optimal':>8s}"]
    for s in summary:
        lines.append(f"{s['algorithm']:10s} {s['C']:2d} {s['instances']:4d} {s['mean_over_milp']:9.4f} "
                     f"{s['max_over_milp']:7.4f} {s['within_5pct']:6.2f} {s['mean_max_over_bound']:7.3f} "
                     f"{s['mean_solve_ms']:9.2f} {s['milp_mean_gap']:9.2e} {s['milp_proven_optimal']:8.2f}")
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict], append: bool = False) -> None:
    """rows to a CSV; append adds them (no header) to a file an earlier call wrote with the same columns."""
    with open(path, "a" if append else "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if not append:
            w.writeheader()
        w.writerows(rows)


def _format(summary: list[dict]) -> str:
    lines = [f"{'algorithm':10s} {'C':>2s} {'mode':6s} {'n':>5s} {'mean':>7s} {'p95':>7s} {'/bound':>7s} "
             f"{'est ms':>7s} {'solve ms':>9s} {'max ms':>8s} {'gap':>8s}"]
    for s in summary:
        gap = f"{s['mean_gap']:.2e}" if s["mean_gap"] != "" else ""
        lines.append(f"{s['algorithm']:10s} {s['C']:2d} {s['mode']:6s} {s['instances']:5d} "
                     f"{s['mean_max_over_mean']:7.3f} {s['p95_max_over_mean']:7.3f} {s['mean_max_over_bound']:7.3f} "
                     f"{s['mean_est_time_ms']:7.2f} {s['mean_solve_ms']:9.2f} {s['max_solve_ms']:8.1f} {gap:>8s}")
    return "\n".join(lines)


def _plot(rows: list[dict], slots: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(slots), figsize=(5 * len(slots), 4), squeeze=False)
    for ax, c in zip(axes[0], slots):
        sel = [r for r in rows if r["C"] == c and r["mode"] == "lagged"]
        for alg in sorted({r["algorithm"] for r in sel}):
            its = sorted({r["iteration"] for r in sel if r["algorithm"] == alg})
            y = [np.mean([r["max_over_mean"] for r in sel if r["algorithm"] == alg and r["iteration"] == i]) for i in its]
            ax.plot(its, y, label=alg)
        # Bound in max/mean units: max_over_mean / max_over_bound of any row is bound / mean for that instance.
        ref = [r for r in sel if r["algorithm"] == sel[0]["algorithm"]] if sel else []
        its = sorted({r["iteration"] for r in ref})
        yb = [np.mean([r["max_over_mean"] / r["max_over_bound"] for r in ref if r["iteration"] == i]) for i in its]
        ax.plot(its, yb, "k--", label="replica bound")
        ax.set_title(f"C = {c} (lagged, window plan)")
        ax.set_xlabel("sampled iteration")
        ax.set_ylabel("max / mean device tokens")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
