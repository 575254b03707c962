"""Planner quality: the LAER-MoE paper's planner study on the real SmartMoE expert-load trace, on larger clusters (the
trace's source ranks split, and Zipf-skewed synthetic loads), and against the exact MILP on small instances.

Settings (each over C in `slots`):
  trace:        the trace on its own shape (2 nodes x 8 devices by default; `cluster` resizes it, merging ranks);
  trace_split:  N in `scale_devices`: each of the trace's 16 source ranks split evenly (multinomially) over N / 16
                devices, at `scale_instances` (iteration, layer) samples spread over the trace;
  zipf:         N in `scale_devices`, E in `zipf_experts`: `scale_instances` random Zipf popularities, each source's
                weights near it, window and next micro-batch drawn from them.
For every instance (a micro-batch t, with the `window` micro-batches before it), planner, mode and routing rule:
  lagged: plan from the window (laer_plus scores its candidates on each of its micro-batches, the others plan from
          its sum), apply the plan to micro-batch t; oracle: plan and evaluate on micro-batch t;
  routing fsep: the runtime splits tokens by the FSEP rule on the plan's layout; quotas: it follows the plan's
          quotas where the plan has them (else the FSEP rule). laer_plus is told which (`RoutingMode`); the other
          planners' plans are the same under both and scored under each.
Each planner's layer time is compared with laer's on the same instance, mode and routing: a win (loss) is lower
(higher) by more than `tolerance`; summaries count them per setting, N, E, C, mode and routing.
Writes rows.csv (one row per instance, planner, mode and routing; appended per C of the trace and per scale
setting), summary.csv / summary.json (rewritten as they grow), quality.png (the trace over its real iterations),
scale.png (the larger clusters), and the MILP study's milp_rows.csv / milp_summary.csv / milp.png.
Solve times are CPU time of the planning thread (time.thread_time) and exclude first-call costs (numba compilation,
caches): every planner plans one instance untimed first.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from common.datapaths import ensure_files, locate_data_dir
from common.topology import get_cluster
from common.traces import ExpertLoadTrace, load_expert_trace
from experiments import plotting
from experiments.planner_speed import zipf_weights
from experiments.tables import headline_row, write_csv
from training.planner import PlanObjective, RoutingMode, make_planner, replica_lower_bound
from training.planner.evaluate import evaluate
from training.routing import fsep_summary

log = logging.getLogger(__name__)
MODES = ("oracle", "lagged")


def load_counts(path: Path) -> np.ndarray:
    """counts [I, R, L, M, E] int64 from the SmartMoE npz."""
    return load_expert_trace(path).counts.astype(np.int64)


@dataclass(frozen=True)
class Instance:
    """One planning problem: the window a planner sees and the micro-batch its plan is applied to."""

    window: np.ndarray  # [W, N, E] int64 micro-batches before t
    now: np.ndarray  # [N, E] int64 micro-batch t
    iteration: int  # real training iteration of micro-batch t (trace), or -1 (synthetic)
    microbatch: int  # micro-batch index within the iteration, or the synthetic sample's index
    layer: int  # trace layer, or -1


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


def split_ranks(x: np.ndarray, factor: int, rng: np.random.Generator) -> np.ndarray:
    """[R, E] counts seen from R * factor sources: each rank's tokens for each expert split multinomially evenly over
    its `factor` devices (device r * factor + s)."""
    parts = rng.multinomial(x, np.full(factor, 1.0 / factor))  # [R, E, factor]
    return parts.transpose(0, 2, 1).reshape(x.shape[0] * factor, x.shape[1])


def trace_instances(trace: ExpertLoadTrace, positions: list[tuple[int, int]], window: int, split: int = 1,
                    seed: int = 0) -> Iterator[Instance]:
    """Instances at (t, layer) positions of the trace; split > 1 splits every source rank over `split` devices
    (the same micro-batch splits the same way whichever instance it is in)."""
    mbs = trace.num_microbatches

    def mb(layer: int, t: int) -> np.ndarray:
        x = trace.microbatch(layer, t).astype(np.int64)
        return x if split == 1 else split_ranks(x, split, np.random.default_rng((seed, layer, t)))

    for t, layer in positions:
        yield Instance(np.stack([mb(layer, u) for u in range(t - window, t)]), mb(layer, t),
                       int(trace.iterations[t // mbs]), t % mbs, layer)


def zipf_instances(n: int, e: int, count: int, window: int, tokens: int, exponent: float, seed: int
                   ) -> Iterator[Instance]:
    """`count` instances of Zipf-skewed loads on N sources and E experts (one popularity per instance)."""
    for k in range(count):
        rng = np.random.default_rng((seed, n, e, k))
        p = zipf_weights(rng, n, e, exponent)  # [N, E]
        mbs = np.stack([[rng.multinomial(tokens, p[i]) for i in range(n)] for _ in range(window + 1)])
        yield Instance(mbs[:window], mbs[window], -1, k, -1)


def make_planners(algorithms: list[str], n: int, c: int, g: int, e: int, cost: PlanObjective,
                  fast_budget_s: float | None) -> dict[str, dict[RoutingMode, object]]:
    """label -> {routing: planner}: laer_plus (and its fast path) told each routing mode; the others one planner."""
    out = {}
    for name in algorithms:
        if name == "static_ep" and n * c != e:
            continue  # plain EP has exactly E/N slots per device
        if name == "laer_plus":
            variants = [("laer_plus", {})] + ([("laer_plus_fast", {"time_budget_s": fast_budget_s})]
                                              if fast_budget_s is not None else [])
            for label, opts in variants:
                out[label] = {m: make_planner(name, n, c, g, objective=cost, routing=m, **opts) for m in RoutingMode}
        else:
            p = make_planner(name, n, c, g, objective=cost)
            out[name] = {m: p for m in RoutingMode}
    return out


def quality_rows(instances: list[Instance], planners: dict, setting: str, c: int, g: int, cost: PlanObjective,
                 desc: str) -> list[dict]:
    """One row per (instance, planner, mode, routing); one progress bar over the instances."""
    first = instances[0]
    for per_mode in planners.values():  # untimed first call: numba compilation and caches stay out of solve_s
        for p in {id(p): p for p in per_mode.values()}.values():
            p.plan(first.now)
    rows = []
    for k, inst in enumerate(tqdm(instances, desc=desc, unit="inst")):
        n, e = inst.now.shape
        bound = replica_lower_bound(inst.now, n, c)
        mean = inst.now.sum() / n
        for label, per_mode in planners.items():
            for mode in MODES:
                made = {}  # planner id -> (plan, solve_s): a planner that ignores the routing mode plans once
                for routing, planner in per_mode.items():
                    if id(planner) not in made:
                        c0 = time.thread_time()
                        plan = planner.plan(inst.now if mode == "oracle" else inst.window)
                        made[id(planner)] = (plan, time.thread_time() - c0)
                    plan, solve = made[id(planner)]
                    if routing is RoutingMode.FSEP or plan.fsep_routed:
                        traffic = fsep_summary(inst.now, plan.layout, g)
                        tokens, est = traffic.device_tokens, cost.objective(*traffic)
                    else:
                        tokens, est = evaluate(plan, inst.now, g, cost)
                    rows.append({
                        "setting": setting, "N": n, "E": e, "C": c, "instance": k, "iteration": inst.iteration,
                        "microbatch": inst.microbatch, "layer": inst.layer, "algorithm": label, "mode": mode,
                        "routing": routing.value, "quotas": not plan.fsep_routed,
                        "max_over_mean": float(tokens.max() / mean), "max_over_bound": float(tokens.max() / bound),
                        "est_time_s": float(est), "solve_s": solve, "gap": "" if plan.gap is None else float(plan.gap),
                    })
    return rows


GROUP = ("setting", "N", "E", "C", "algorithm", "mode", "routing")


def summarise(rows: list[dict], tolerance: float) -> list[dict]:
    """Per (setting, N, E, C, algorithm, mode, routing): means, and wins / ties / losses against laer on the layer
    time (relative difference beyond `tolerance`)."""
    laer = {(r["setting"], r["N"], r["E"], r["C"], r["instance"], r["mode"], r["routing"]): r["est_time_s"]
            for r in rows if r["algorithm"] == "laer"}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in GROUP), []).append(r)
    out = []
    for key in sorted(groups, key=lambda k: tuple(str(x).zfill(6) for x in k)):
        sel = groups[key]
        mm = np.array([r["max_over_mean"] for r in sel])
        st = np.array([r["solve_s"] for r in sel])
        ref = [laer.get((r["setting"], r["N"], r["E"], r["C"], r["instance"], r["mode"], r["routing"])) for r in sel]
        ratio = np.array([r["est_time_s"] / x for r, x in zip(sel, ref) if x])
        out.append({
            **dict(zip(GROUP, key)), "instances": len(sel),
            "mean_max_over_mean": float(mm.mean()), "p95_max_over_mean": float(np.percentile(mm, 95)),
            "mean_max_over_bound": float(np.mean([r["max_over_bound"] for r in sel])),
            "mean_est_time_ms": float(np.mean([r["est_time_s"] for r in sel]) * 1e3),
            "wins": int(np.sum(ratio < 1 - tolerance)) if ratio.size else "",
            "ties": int(np.sum(np.abs(ratio - 1) <= tolerance)) if ratio.size else "",
            "losses": int(np.sum(ratio > 1 + tolerance)) if ratio.size else "",
            "worst_over_laer": float(ratio.max()) if ratio.size else "",
            "quota_plans": int(sum(r["quotas"] for r in sel)),
            "mean_solve_ms": float(st.mean() * 1e3), "max_solve_ms": float(st.max() * 1e3),
        })
    return out


def run(cfg: DictConfig, out_dir: Path) -> dict:
    pc = cfg.planner_quality
    for key in ("window", "iteration_stride", "layer_stride"):
        if int(pc[key]) < 1:
            raise ValueError(f"config key 'planner_quality.{key}' must be >= 1, got {pc[key]}")
    if not 0 <= pc.tolerance < 1:
        raise ValueError(f"config key 'planner_quality.tolerance' must be in [0, 1), got {pc.tolerance}")
    out_dir = Path(out_dir)
    files = ensure_files(locate_data_dir(cfg.paths.data_dir, os.environ), [pc.expert_trace],
                         cfg.paths.fallback, synthetic_dir=out_dir / "synthetic_data")
    full = load_expert_trace(files.path(pc.expert_trace))
    ranks, g = cluster_shape(cfg, full.num_ranks)
    trace = full.merge_ranks(ranks) if ranks != full.num_ranks else full
    iters, _, layers, mbs, e = trace.counts.shape
    window = int(pc.window)

    def objective(n: int, g_: int) -> PlanObjective:
        cluster = get_cluster(cfg.cluster.preset).with_shape(n // g_, g_)
        return PlanObjective.for_model(cluster, hidden=pc.hidden, ffn=pc.ffn, recompute=pc.recompute)

    # Trace instances: micro-batch positions t in each layer's iteration-major sequence with a full window before.
    ts = [i * mbs + m for i in range(0, iters, int(pc.iteration_stride)) for m in range(mbs) if i * mbs + m >= window]
    positions = [(t, layer) for layer in range(0, layers, int(pc.layer_stride)) for t in ts]
    if not positions:
        raise ValueError(f"config key 'planner_quality.window'={window}: no sampled micro-batch has a full window")
    log.info("planner_quality: trace %d instances x C in %s x %s on %d devices (%d per node); writing to %s",
             len(positions), list(pc.slots), list(pc.algorithms), ranks, g, out_dir)

    rows: list[dict] = []
    summary: list[dict] = []

    def add(new: list[dict], what: str) -> None:
        nonlocal summary
        if not new:
            return
        write_csv(out_dir / "rows.csv", new, append=bool(rows))
        rows.extend(new)
        summary = summarise(rows, pc.tolerance)
        write_csv(out_dir / "summary.csv", summary)
        (out_dir / "summary.json").write_text(json.dumps({"quality": summary, "milp": []}, indent=1))
        log.info("%s done: %d rows appended to %s; summary so far in %s", what, len(new), out_dir / "rows.csv",
                 out_dir / "summary.csv")

    cost = objective(ranks, g)
    trace_list = list(trace_instances(trace, positions, window))
    for c in pc.slots:
        planners = make_planners(list(pc.algorithms), ranks, int(c), g, e, cost, pc.fast_budget_s)
        add(quality_rows(trace_list, planners, "trace", int(c), g, cost, f"trace N={ranks} C={c}"), f"C={c}")
    # Larger clusters.
    gs = int(pc.devices_per_node)
    picks = np.random.default_rng(cfg.seed).choice(len(positions), min(int(pc.scale_instances), len(positions)),
                                                   replace=False)
    scale_positions = [positions[i] for i in sorted(picks)]
    for n in pc.scale_devices:
        n = int(n)
        if n % full.num_ranks or n % gs:
            raise ValueError(f"config key 'planner_quality.scale_devices': {n} is not a multiple of the trace's "
                             f"{full.num_ranks} ranks and of planner_quality.devices_per_node={gs}")
        cost_n = objective(n, gs)
        sets = [("trace_split", e, list(trace_instances(full, scale_positions, window, n // full.num_ranks,
                                                        cfg.seed)))]
        sets += [("zipf", int(ez), list(zipf_instances(n, int(ez), int(pc.scale_instances), window,
                                                       int(pc.zipf_tokens_per_device), pc.zipf_exponent, cfg.seed)))
                 for ez in pc.zipf_experts]
        for setting, e_, insts in sets:
            new = []
            for c in pc.slots:
                if n * int(c) < e_:
                    continue
                planners = make_planners(list(pc.algorithms), n, int(c), gs, e_, cost_n, pc.fast_budget_s)
                new += quality_rows(insts, planners, setting, int(c), gs, cost_n, f"{setting} N={n} E={e_} C={c}")
            add(new, f"{setting} N={n} E={e_}")
    log.info("%s", _format(summary))
    _plot_trace(rows, list(pc.slots), ranks, g, window, cfg.cluster.preset, out_dir / "quality.png")
    if pc.scale_devices:
        _plot_scale(summary, out_dir / "scale.png", pc.tolerance)
    milp_rows, milp_summary = milp_study(trace.counts, pc, cost, cfg.cluster.preset)
    if milp_rows:
        write_csv(out_dir / "milp_rows.csv", milp_rows)
        write_csv(out_dir / "milp_summary.csv", milp_summary)
        log.info("%s", _format_milp(milp_summary))
        _plot_milp(milp_summary, pc, out_dir / "milp.png")
    (out_dir / "summary.json").write_text(json.dumps({"quality": summary, "milp": milp_summary}, indent=1))
    log.info("wrote %s: rows.csv, summary.csv, summary.json, quality.png%s%s", out_dir,
             ", scale.png" if pc.scale_devices else "", ", milp_rows.csv, milp_summary.csv, milp.png" if milp_rows else "")
    return {"summary": summary, "milp": milp_summary, "instances": len(positions),
            "wins_ties_losses": wins_ties_losses(summary), "headline": headline_rows(summary, milp_summary)}


def headline_rows(summary: list[dict], milp_summary: list[dict]) -> list[dict]:
    """On the trace (lagged plans, FSEP routing) per C: the paper's planner's max/mean device tokens and laer_plus's
    layer time over laer's; on the MILP cuts (largest C): laer's and laer_plus's objective over the optimum. The
    paper reports no such numbers (its planner study is Fig. 11's solve time), so the paper column stays empty."""
    by = {(s["C"], s["algorithm"]): s for s in summary
          if s["setting"] == "trace" and s["mode"] == "lagged" and s["routing"] == RoutingMode.FSEP.value}
    rows = []
    for c in sorted({c for c, _ in by}):
        laer, plus = by.get((c, "laer")), by.get((c, "laer_plus"))
        if laer:
            rows.append(headline_row("Planner", f"trace N={laer['N']}, C={c}, lagged", "laer max/mean device tokens",
                                     laer["mean_max_over_mean"]))
        if laer and plus:
            rows.append(headline_row("Planner", f"trace N={laer['N']}, C={c}, lagged", "laer_plus / laer layer time",
                                     plus["mean_est_time_ms"] / laer["mean_est_time_ms"]))
    top = max((s["C"] for s in milp_summary), default=None)
    rows += [headline_row("Planner", f"MILP cuts, C={s['C']}", f"{s['algorithm']} objective / MILP's",
                          s["mean_over_milp"])
             for s in milp_summary if s["C"] == top and s["algorithm"] in ("laer", "laer_plus")]
    return rows


def wins_ties_losses(summary: list[dict]) -> dict[str, list[int]]:
    """algorithm -> [wins, ties, losses] against laer over every setting, N, E, C, mode and routing."""
    out: dict[str, list[int]] = {}
    for s in summary:
        if s["algorithm"] != "laer" and s["wins"] != "":
            acc = out.setdefault(s["algorithm"], [0, 0, 0])
            for i, k in enumerate(("wins", "ties", "losses")):
                acc[i] += s[k]
    return out


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
                t0 = time.thread_time()
                plan = p.plan(x)
                solve = time.thread_time() - t0
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


def _format(summary: list[dict]) -> str:
    lines = [f"{'setting':11s} {'N':>3s} {'E':>3s} {'C':>2s} {'algorithm':14s} {'mode':6s} {'routing':7s} {'n':>4s} "
             f"{'mean':>7s} {'p95':>7s} {'/bound':>7s} {'est ms':>7s} {'W/T/L vs laer':>14s} {'worst':>6s} "
             f"{'solve ms':>9s} {'max ms':>8s}"]
    for s in summary:
        wtl = f"{s['wins']}/{s['ties']}/{s['losses']}" if s["wins"] != "" else ""
        worst = f"{s['worst_over_laer']:.3f}" if s["worst_over_laer"] != "" else ""
        lines.append(f"{s['setting']:11s} {s['N']:3d} {s['E']:3d} {s['C']:2d} {s['algorithm']:14s} {s['mode']:6s} "
                     f"{s['routing']:7s} {s['instances']:4d} {s['mean_max_over_mean']:7.3f} "
                     f"{s['p95_max_over_mean']:7.3f} {s['mean_max_over_bound']:7.3f} {s['mean_est_time_ms']:7.2f} "
                     f"{wtl:>14s} {worst:>6s} {s['mean_solve_ms']:9.2f} {s['max_solve_ms']:8.1f}")
    totals = wins_ties_losses(summary)
    lines.append("wins/ties/losses against laer over all instances, modes and routings: "
                 + ", ".join(f"{a} {w}/{t}/{lo}" for a, (w, t, lo) in sorted(totals.items())))
    return "\n".join(lines)


def _plain_xticks(ax, xticks: list[int]) -> None:
    """A log-2 x axis labelled with the plain values (2, 4, 8)."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xticks(xticks)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _draw_order(algorithms: list[str]) -> list[str]:
    """laer (the reference) last, so that lines equal to it still show it on top, drawn larger."""
    return [a for a in algorithms if a != "laer"] + (["laer"] if "laer" in algorithms else [])


def _plot_trace(rows: list[dict], slots: list[int], n: int, g: int, window: int, preset, path: Path) -> None:
    """Lagged max/mean over the trace's real iterations: one panel per (routing, C), a line per planner."""
    sel_all = [r for r in rows if r["setting"] == "trace" and r["mode"] == "lagged"]
    algorithms = sorted({r["algorithm"] for r in sel_all})
    routings = [m.value for m in RoutingMode]
    fig, axes = plotting.figure(
        len(routings), len(slots), "Planner quality on the SmartMoE trace (lagged: plan from the window, apply to "
        "the next micro-batch)",
        {"N": f"{n} ({n // g} nodes x {g})", "window": window, "cluster": getattr(preset, "value", preset),
         "y": "max / mean device tokens, mean over sampled layers and micro-batches"})
    for row, routing in enumerate(routings):
        for col, c in enumerate(slots):
            ax = axes[row, col]
            sel = [r for r in sel_all if r["C"] == c and r["routing"] == routing]
            for alg in _draw_order(algorithms):
                its = sorted({r["iteration"] for r in sel if r["algorithm"] == alg})
                y = [np.mean([r["max_over_mean"] for r in sel if r["algorithm"] == alg and r["iteration"] == it])
                     for it in its]
                big = {"markersize": 7, "linewidth": 1.8, "color": "black", "zorder": 4} if alg == "laer" else {}
                plotting.line(ax, its, y, "laer (paper)" if alg == "laer" else alg, index=algorithms.index(alg),
                              **{"markersize": 3.5, "linewidth": 1.0, **big})
            ref = [r for r in sel if r["algorithm"] == algorithms[0]]  # any planner's rows give bound / mean
            its = sorted({r["iteration"] for r in ref})
            yb = [np.mean([r["max_over_mean"] / r["max_over_bound"] for r in ref if r["iteration"] == it]) for it in its]
            ax.plot(its, yb, color="gray", linestyle=":", linewidth=1.5, label="replica bound", zorder=1)
            # Panels keep their own linear y range: C = 2 sits near 6, C = 8 within a few percent of 1.
            ax.set(title=f"C = {c}, routing: {routing}", xlabel="training iteration",
                   ylabel="max / mean device tokens")
            if col == len(slots) - 1:
                plotting.legend(ax, outside=True)
    plotting.save(fig, path)


def _plot_scale(summary: list[dict], path: Path, tolerance: float) -> None:
    """Larger clusters: mean layer time over laer's per (setting, E), x = C; colour and marker per planner, solid
    for the smaller N, dashed for the larger; lagged mode, one row per routing rule."""
    sel_all = [s for s in summary if s["setting"] != "trace" and s["mode"] == "lagged"]
    settings = sorted({(s["setting"], s["E"]) for s in sel_all})
    routings = [m.value for m in RoutingMode]
    algorithms = sorted({s["algorithm"] for s in sel_all} - {"laer"})
    sizes = sorted({s["N"] for s in sel_all})
    fig, axes = plotting.figure(
        len(routings), len(settings), "Planner quality on larger clusters, against the paper's planner (laer)",
        {"mode": "lagged", "y": "layer time / laer's, mean over instances", "lines": "solid N = "
         + ", dashed N = ".join(map(str, sizes)), "tie band": f"±{tolerance:.1%}"})
    for row, routing in enumerate(routings):
        for col, (setting, e) in enumerate(settings):
            ax = axes[row, col]
            sel = [s for s in sel_all if s["setting"] == setting and s["E"] == e and s["routing"] == routing]
            for i, alg in enumerate(algorithms):
                for k, n in enumerate(sizes):
                    pts = sorted((s["C"], s["mean_est_time_ms"]) for s in sel if s["algorithm"] == alg and s["N"] == n)
                    ref = {s["C"]: s["mean_est_time_ms"] for s in sel if s["algorithm"] == "laer" and s["N"] == n}
                    pts = [(c, v / ref[c]) for c, v in pts if c in ref]
                    if pts:
                        plotting.line(ax, [c for c, _ in pts], [v for _, v in pts], f"{alg} N={n}", index=i,
                                      color=f"C{i}", linestyle=plotting.LINESTYLES[k % 2])
            ax.axhspan(1 - tolerance, 1 + tolerance, color="gray", alpha=0.25, label="tie with laer")
            ax.set(title=f"{setting}, E = {e}, routing: {routing}", xlabel="slots per device C",
                   ylabel="layer time / laer", xscale="log")
            _plain_xticks(ax, sorted({s["C"] for s in sel}))
            if col == len(settings) - 1:
                plotting.legend(ax, outside=True)
    plotting.save(fig, path)


def _plot_milp(summary: list[dict], pc, path: Path) -> None:
    """Each heuristic's objective over the exact MILP's, mean and worst, per C."""
    algorithms = [a for a in dict.fromkeys(s["algorithm"] for s in summary) if a != "milp"]
    fig, axes = plotting.figure(
        1, 2, "Heuristics against the exact MILP (oracle, small instances cut from the SmartMoE trace)",
        {"N": f"{pc.milp_devices} ({pc.milp_devices // pc.milp_devices_per_node} nodes)", "E": pc.milp_experts,
         "instances": pc.milp_instances, "MILP limit": f"{pc.milp_time_limit_s:g} s"}, sharey=True)
    for ax, key, what in ((axes[0, 0], "mean_over_milp", "mean"), (axes[0, 1], "max_over_milp", "worst")):
        for i, alg in enumerate(algorithms):
            pts = sorted((s["C"], s[key]) for s in summary if s["algorithm"] == alg)
            plotting.line(ax, [c for c, _ in pts], [v for _, v in pts], alg, index=i)
        plotting.hline(ax, 1.0, "MILP")
        ax.set(title=f"{what} over instances", xlabel="slots per device C", ylabel="objective / MILP's",
               xticks=list(pc.milp_slots))
    plotting.legend(axes[0, 1], outside=True)
    plotting.save(fig, path)
