"""Fig. 10 of the LAER-MoE paper, simulated beside the paper's own per-rank data, for mixtral-8x7b-e8k2 and -e16k4.

(a) Time breakdown (`breakdown_analysis_backup.csv`): per rank, seconds per iteration inside token all-to-alls
    (the device's own transfers plus the wait for the slowest device's experts, as the paper measures them:
    `SimResult.device_alltoall_s`), in expert compute (`device_expert_s`) and the iteration total; min / mean / max
    over ranks, ours beside the paper's, and the error of each rank and of the mean.
(b) Max tokens per device (`token_analysis_backup.csv`): per layer, the routes the busiest device computes in one
    micro-batch over the mean per device (`SimResult.max_tokens`), averaged over iterations.

Units of the paper's token_num: routes (tokens x k) of one micro-batch. Every (layer, iteration) of it sums over
the 32 ranks to 2^20 for the top-2 model and 2^21 for the top-4 one, which is 128 x 8192 tokens / 2 micro-batches
x k (`PaperRun`); tokens per iteration would give 2^20 for both. `token_units` checks this on the files it reads.

Loads: the SmartMoE trace rescaled to each model (`experiments.laer_paper.simulate`). The paper's FSDP token counts
do not determine per-expert loads: under the static FSDP+EP layout (`training.placement.fsdp_ep_placement`) device d
holds experts {i*E/C + d mod E/C}, so the experts of one group (g, g+4 for E=8, C=2; g, g+4, g+8, g+12 for E=16,
C=4) always share the same devices and a rank's count is the sum over its group (and over the sources of its node,
as the counts sum per node to the node's own routes: the routing stays in the node). Only [node, group] sums are
known, and the other systems' planners decide on the split inside a group, so the trace stays the load source.

The all-to-all terms (`alltoall_terms`, alltoall_terms.csv): each system's mean all-to-all split into the wait for
the busiest device's experts and the rest, ours and the paper's (its wait from its own token counts), to say which
term a gap comes from.

Writes breakdown.csv (per rank), breakdown_summary.csv, tokens.csv (per layer), tokens_summary.csv,
alltoall_terms.csv, fig10a.png, fig10b.png; the returned dict carries the headline rows.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from common.datapaths import ensure_files, locate_data_dir
from common.traces import load_expert_trace
from experiments import plotting
from experiments.laer_paper import (
    PaperRun,
    paper_csv,
    paper_model,
    read_breakdown,
    read_tokens,
    simulate,
    trace_samples,
)
from experiments.tables import headline_row, rel_error, write_csv
from training.sim import SimResult, get_system

log = logging.getLogger(__name__)

QUANTITIES = ("alltoall", "expert", "total")


def per_rank(results: list[SimResult]) -> dict[str, np.ndarray]:
    """Per-rank seconds per iteration, mean over the samples: alltoall [N], expert [N], total [N]."""
    a2a = np.mean([r.device_alltoall_s for r in results], axis=0)
    total = float(np.mean([r.iteration_s for r in results]))
    return {"alltoall": a2a, "expert": np.mean([r.device_expert_s for r in results], axis=0),
            "total": np.full(a2a.shape, total)}


def breakdown_rows(model: str, system: str, ours: dict[str, np.ndarray],
                   paper: list[tuple[int, float, float, float]] | None) -> tuple[list[dict], list[dict]]:
    """(per-rank rows, summary rows) of one (model, system). paper: per rank (rank, all-to-all, expert, total) as
    `read_breakdown` gives it, or None; ranks are matched by index."""
    n = ours["alltoall"].size
    ref = {q: None for q in QUANTITIES}
    if paper is not None:
        if len(paper) != n:
            raise ValueError(f"breakdown: the paper has {len(paper)} ranks for ({model}, {system}), we simulate {n}")
        arr = np.array([p[1:] for p in paper], dtype=float)  # [N, 3]
        ref = {q: arr[:, i] for i, q in enumerate(QUANTITIES)}
    rows = []
    for d in range(n):
        row = {"model": model, "system": system, "rank": d}
        for q in QUANTITIES:
            p = None if ref[q] is None else float(ref[q][d])
            row.update({f"ours_{q}_s": float(ours[q][d]), f"paper_{q}_s": p, f"{q}_error": rel_error(float(ours[q][d]), p)})
        rows.append(row)
    summary = []
    for q in QUANTITIES:
        o, p = ours[q], ref[q]
        errs = None if p is None else (o - p) / p
        summary.append({"model": model, "system": system, "quantity": q,
                        "ours_min": float(o.min()), "ours_mean": float(o.mean()), "ours_max": float(o.max()),
                        "paper_min": None if p is None else float(p.min()),
                        "paper_mean": None if p is None else float(p.mean()),
                        "paper_max": None if p is None else float(p.max()),
                        "error_of_mean": None if p is None else rel_error(float(o.mean()), float(p.mean())),
                        "mean_abs_rank_error": None if errs is None else float(np.abs(errs).mean())})
    return rows, summary


def alltoall_terms(model: str, system: str, results: list[SimResult],
                   paper: list[tuple[int, float, float, float]] | None, paper_tokens: np.ndarray | None) -> dict:
    """The mean per-rank all-to-all seconds split into the wait for the busiest device's experts and the rest (own
    transfers and anything else), ours and the paper's. Ours: wait = the per-layer busiest expert time summed minus
    the rank's own, averaged over ranks (`SimResult`). The paper's, from its own per-rank token counts [I, L, N]:
    wait = (sum over layers of the busiest rank's routes / sum of the mean - 1) x its mean expert seconds, assuming
    expert time proportional to routes (the simulator's GEMM model at these sizes); rest = its all-to-all - wait."""
    a2a = float(np.mean([r.device_alltoall_s.mean() for r in results]))
    expert = float(np.mean([r.device_expert_s.mean() for r in results]))
    wait = float(np.mean([r.iteration.expert for r in results])) - expert
    row = {"model": model, "system": system, "ours_alltoall_s": a2a, "ours_wait_s": wait, "ours_rest_s": a2a - wait,
           "ours_imbalance": (wait + expert) / expert, "paper_alltoall_s": None, "paper_wait_s": None,
           "paper_rest_s": None, "paper_imbalance": None}
    if paper is not None and paper_tokens is not None:
        p_a2a = float(np.mean([p[1] for p in paper]))
        p_expert = float(np.mean([p[2] for p in paper]))
        imbalance = float((paper_tokens.max(-1).sum(-1) / paper_tokens.mean(-1).sum(-1)).mean())  # over iterations
        p_wait = (imbalance - 1.0) * p_expert
        row.update({"paper_alltoall_s": p_a2a, "paper_wait_s": p_wait, "paper_rest_s": p_a2a - p_wait,
                    "paper_imbalance": imbalance})
    return row


def paper_token_array(counts: dict[tuple[int, int, int], int]) -> np.ndarray:
    """[I, L, N] routes per (iteration, layer, rank) from `read_tokens`' dict; every cell must be present."""
    iters = sorted({i for i, _, _ in counts})
    layers = sorted({la for _, la, _ in counts})
    ranks = sorted({r for _, _, r in counts})
    out = np.full((len(iters), len(layers), len(ranks)), -1, dtype=np.int64)
    ii, li, ri = ({v: k for k, v in enumerate(x)} for x in (iters, layers, ranks))
    for (i, la, r), v in counts.items():
        out[ii[i], li[la], ri[r]] = v
    if np.any(out < 0):
        raise ValueError("token counts: some (iteration, layer, rank) cells are missing")
    return out


def token_units(tokens: np.ndarray, model_top_k: int, run: PaperRun) -> set[str]:
    """The units the paper's counts [I, L, N] of one model can be in, from their sum per (iteration, layer) against
    the setup: 'routes per micro-batch' (tokens of one micro-batch x k) and / or 'tokens per iteration' (at k = 2
    with 2 micro-batches both give the same sum; a top-4 model tells them apart)."""
    n = tokens.shape[-1]
    sums = np.unique(tokens.sum(-1))
    per_microbatch = run.tokens_per_device(n) * n
    candidates = {"routes per micro-batch": per_microbatch * model_top_k,
                  "tokens per iteration": per_microbatch * run.microbatches}
    return {name for name, total in candidates.items() if sums.size == 1 and sums[0] == total}


def token_rows(model: str, system: str, ours_max: np.ndarray, mean_per_device: float,
               paper: np.ndarray | None) -> tuple[list[dict], dict]:
    """(per-layer rows, summary) of one (model, system). ours_max [S, L] busiest device's routes per sample and
    layer; paper [I, L, N] or None. max/mean: the busiest device over the mean per device, averaged over samples
    (iterations)."""
    ours_ratio = ours_max / mean_per_device  # [S, L]
    if paper is not None:
        if paper.shape[1] != ours_max.shape[1]:
            raise ValueError(f"tokens: the paper has {paper.shape[1]} layers for ({model}, {system}), the model "
                             f"{ours_max.shape[1]}")
        p_max = paper.max(-1)  # [I, L]
        p_ratio = p_max / paper.mean(-1)
    rows = []
    for la in range(ours_max.shape[1]):
        o_max, o_r = float(ours_max[:, la].mean()), float(ours_ratio[:, la].mean())
        pm = None if paper is None else float(p_max[:, la].mean())
        pr = None if paper is None else float(p_ratio[:, la].mean())
        rows.append({"model": model, "system": system, "layer": la, "ours_max": o_max, "paper_max": pm,
                     "max_error": rel_error(o_max, pm), "ours_max_over_mean": o_r, "paper_max_over_mean": pr,
                     "max_over_mean_error": rel_error(o_r, pr)})
    o, p = float(ours_ratio.mean()), None if paper is None else float(p_ratio.mean())
    summary = {"model": model, "system": system, "ours_max_over_mean": o, "paper_max_over_mean": p,
               "error": rel_error(o, p), "ours_worst_layer": float(ours_ratio.mean(0).max()),
               "paper_worst_layer": None if paper is None else float(p_ratio.mean(0).max()),
               "paper_iterations": 0 if paper is None else int(paper.shape[0])}
    return rows, summary


def run(cfg: DictConfig, out_dir: Path) -> dict:
    fc = cfg.fig10
    if int(fc.samples) < 1:
        raise ValueError(f"fig10.samples must be >= 1, got {fc.samples}")
    models = {}
    for name in fc.models:
        try:
            models[name] = paper_model(name)
        except ValueError as err:
            raise ValueError(f"fig10.models: {err}") from None
    for s in fc.systems:
        try:
            get_system(s)
        except ValueError as err:
            raise ValueError(f"fig10.systems: {err}") from None
    if not models or not fc.systems:
        raise ValueError("fig10.models and fig10.systems must not be empty")
    files = ensure_files(locate_data_dir(cfg.paths.data_dir, os.environ), [fc.expert_trace], cfg.paths.fallback,
                         synthetic_dir=out_dir / "synthetic_data", seed=cfg.seed)
    trace = load_expert_trace(files.path(fc.expert_trace))
    b_path = paper_csv(cfg, fc.breakdown_results)
    t_path = paper_csv(cfg, fc.token_results)
    p_breakdown = read_breakdown(b_path) if b_path is not None else {}
    p_tokens = read_tokens(t_path) if t_path is not None else {}
    samples = trace_samples(trace, int(fc.samples))
    run_ = PaperRun()

    b_rows, b_summary, t_rows, t_summary, terms = [], [], [], [], []
    units = {}
    grid = [(m, s) for m in models for s in fc.systems]
    for name, system in tqdm(grid, desc="fig10", leave=False):
        model = models[name]
        results = simulate(model, system, trace, samples, run_)
        rows, summary = breakdown_rows(name, system, per_rank(results), p_breakdown.get((name, system)))
        b_rows += rows
        b_summary += summary
        paper = p_tokens.get((name, system))
        paper = None if paper is None else paper_token_array(paper)
        if paper is not None:
            units[(name, system)] = token_units(paper, model.top_k, run_)
        n = results[0].device_expert_s.size
        rows, summary = token_rows(name, system, np.stack([r.max_tokens for r in results]),
                                   run_.tokens_per_device(n) * model.top_k, paper)
        t_rows += rows
        t_summary.append(summary)
        terms.append(alltoall_terms(name, system, results, p_breakdown.get((name, system)), paper))
    unit = set.intersection(*units.values()) if units else set()
    if units and unit:
        log.info("paper token counts: their sums per (layer, iteration) fit %s (models %s)", " or ".join(sorted(unit)),
                 sorted({m for m, _ in units}))
    elif units:
        log.warning("paper token counts sum to neither the routes of one micro-batch nor the tokens of one iteration;"
                    " compared as routes of one micro-batch")
    for fname, rows in (("breakdown.csv", b_rows), ("breakdown_summary.csv", b_summary), ("tokens.csv", t_rows),
                        ("tokens_summary.csv", t_summary), ("alltoall_terms.csv", terms)):
        write_csv(out_dir / fname, rows)
    log.info("%s", format_tables(b_summary, t_summary, len(samples)))
    log.info("%s", format_terms(terms))
    settings = {"ours": f"simulated, mean of {len(samples)} trace samples", "paper": "32 A100, wikitext, aux 0"}
    plot_breakdown(b_summary, list(models), list(fc.systems), settings, out_dir / "fig10a.png")
    plot_tokens(t_rows, list(models), list(fc.systems), settings, out_dir / "fig10b.png")
    return {"breakdown": b_summary, "tokens": t_summary, "alltoall_terms": terms, "paper_token_unit": sorted(unit),
            "samples": samples,
            "headline": headline(b_summary, t_summary)}


def headline(b_summary: list[dict], t_summary: list[dict]) -> list[dict]:
    """Per model, for fsdp_ep and laer: mean all-to-all seconds per rank and the mean max/mean tokens."""
    out = []
    for r in b_summary:
        if r["system"] in ("fsdp_ep", "laer") and r["quantity"] == "alltoall":
            out.append(headline_row("Fig. 10a", f"{r['system']}, {r['model']}",
                                    "all-to-all s per iteration (mean over ranks)", r["ours_mean"], r["paper_mean"]))
    for r in t_summary:
        if r["system"] in ("fsdp_ep", "laer"):
            out.append(headline_row("Fig. 10b", f"{r['system']}, {r['model']}",
                                    "max / mean tokens per device (mean over layers)", r["ours_max_over_mean"],
                                    r["paper_max_over_mean"]))
    return out


def _f(x, spec: str) -> str:
    return "" if x is None else format(x, spec)


def format_tables(b_summary: list[dict], t_summary: list[dict], samples: int) -> str:
    lines = [f"Fig. 10a, seconds per iteration per rank: min / mean / max over ranks, ours (simulated, mean of "
             f"{samples} trace samples) vs the paper",
             f"{'model':20s} {'system':10s} {'quantity':9s} {'ours min/mean/max':>24s} {'paper min/mean/max':>24s}"
             f" {'err mean':>8s} {'|err| rank':>10s}"]
    for r in b_summary:
        ours = f"{r['ours_min']:.2f}/{r['ours_mean']:.2f}/{r['ours_max']:.2f}"
        paper = "" if r["paper_mean"] is None else f"{r['paper_min']:.2f}/{r['paper_mean']:.2f}/{r['paper_max']:.2f}"
        lines.append(f"{r['model']:20s} {r['system']:10s} {r['quantity']:9s} {ours:>24s} {paper:>24s}"
                     f" {_f(r['error_of_mean'], '+8.1%'):>8s} {_f(r['mean_abs_rank_error'], '10.1%'):>10s}")
    lines += ["Fig. 10b, max / mean tokens per device (one micro-batch), mean over layers and iterations; worst layer",
              f"{'model':20s} {'system':10s} {'ours':>6s} {'paper':>6s} {'error':>7s} {'worst ours':>10s}"
              f" {'worst paper':>11s}"]
    for r in t_summary:
        lines.append(f"{r['model']:20s} {r['system']:10s} {r['ours_max_over_mean']:6.3f}"
                     f" {_f(r['paper_max_over_mean'], '6.3f'):>6s} {_f(r['error'], '+7.1%'):>7s}"
                     f" {r['ours_worst_layer']:10.3f} {_f(r['paper_worst_layer'], '11.3f'):>11s}")
    return "\n".join(lines)


def format_terms(terms: list[dict]) -> str:
    lines = ["Fig. 10a all-to-all, mean per rank = wait for the busiest experts + rest (s per iteration); imbalance: "
             "busiest over mean expert time (the paper's from its token counts)",
             f"{'model':20s} {'system':10s} {'ours a2a':>8s} {'wait':>6s} {'rest':>6s} {'imb':>6s}"
             f" {'paper a2a':>9s} {'wait':>6s} {'rest':>6s} {'imb':>6s}"]
    for t in terms:
        lines.append(f"{t['model']:20s} {t['system']:10s} {t['ours_alltoall_s']:8.2f} {t['ours_wait_s']:6.2f}"
                     f" {t['ours_rest_s']:6.2f} {t['ours_imbalance']:6.3f} {_f(t['paper_alltoall_s'], '9.2f'):>9s}"
                     f" {_f(t['paper_wait_s'], '6.2f'):>6s} {_f(t['paper_rest_s'], '6.2f'):>6s}"
                     f" {_f(t['paper_imbalance'], '6.3f'):>6s}")
    return "\n".join(lines)


def plot_breakdown(summary: list[dict], models: list[str], systems: list[str], settings: dict, path: Path) -> None:
    """Per model: mean all-to-all and expert seconds per rank (bars, min-max whiskers), ours beside the paper."""
    fig, axes = plotting.figure(1, len(models), "Time breakdown vs the LAER-MoE paper (Fig. 10a)", settings,
                                panel_size=(5.2, 3.6), sharey=True)
    by = {(r["model"], r["system"], r["quantity"]): r for r in summary}
    x = np.arange(len(systems))
    bars = [("alltoall", "ours", -0.3, "C0", None), ("alltoall", "paper", -0.1, "C0", "//"),
            ("expert", "ours", 0.1, "C1", None), ("expert", "paper", 0.3, "C1", "//")]
    for ax, m in zip(axes[0], models):
        for q, side, dx, color, hatch in bars:
            rows = [by[(m, s, q)] for s in systems]
            mean = np.array([np.nan if r[f"{side}_mean"] is None else r[f"{side}_mean"] for r in rows])
            lo = np.array([np.nan if r[f"{side}_min"] is None else r[f"{side}_min"] for r in rows])
            hi = np.array([np.nan if r[f"{side}_max"] is None else r[f"{side}_max"] for r in rows])
            ax.bar(x + dx, mean, 0.2, yerr=[mean - lo, hi - mean], capsize=2, color=color, hatch=hatch,
                   edgecolor="black" if hatch else None, alpha=0.6 if hatch else 1.0, label=f"{q}, {side}")
        ax.set_xticks(x, systems)
        ax.set(title=m, ylabel="seconds per iteration (mean over ranks)")
        plotting.legend(ax)
    plotting.save(fig, path)


def plot_tokens(rows: list[dict], models: list[str], systems: list[str], settings: dict, path: Path) -> None:
    """Per model: max / mean tokens per device by layer, ours (solid) and the paper (dotted, crosses) per system."""
    fig, axes = plotting.figure(1, len(models), "Max tokens per device vs the LAER-MoE paper (Fig. 10b)", settings,
                                panel_size=(5.2, 3.6))
    for ax, m in zip(axes[0], models):
        for i, s in enumerate(systems):
            sel = [r for r in rows if r["model"] == m and r["system"] == s]
            layers = [r["layer"] for r in sel]
            plotting.line(ax, layers, [r["ours_max_over_mean"] for r in sel], f"{s}, ours", index=i, color=f"C{i}")
            if sel and sel[0]["paper_max_over_mean"] is not None:
                ax.plot(layers, [r["paper_max_over_mean"] for r in sel], color=f"C{i}", linestyle=":", marker="x",
                        markersize=4, label=f"{s}, paper")
        plotting.hline(ax, 1.0)
        ax.set(title=m, xlabel="layer", ylabel="max / mean tokens per device")
        plotting.legend(ax, outside=True)
    plotting.save(fig, path)
