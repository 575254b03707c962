"""Fig. 12 of the LAER-MoE paper (the ablation), simulated beside the paper's own iteration times
(`ablation_analysis_backup.csv`; mixtral-8x7b-e8k2, wikitext, aux loss 0 there: its LAER row equals its Fig. 8 LAER
row for that setting). Our loads are the SmartMoE trace rescaled to the model (`experiments.laer_paper.simulate`),
not wikitext.

Variants (the artifact's ablation.sh approaches; no_even / no_pq are the `no_even` / `no_pq` flags of the paper's
planner, `greedy_balancer_heuristic` in their csrc/greedy_balancer.cpp, which keep one of its two replica-count
candidates):
- FSDP: the FSDP+EP baseline (system fsdp_ep).
- LAER: system laer.
- no_comm_opt: laer with FSDP's default prefetch limit of 1 unit instead of 2 (simulate's prefetch=Prefetch.unit):
  the one thing the artifact's ABLATION_APPROACH=no_comm_opt changes in its runtime (`training.sim.Prefetch` cites
  the code). Weights are then fetched one FSDP unit ahead, hidden under the layer's own attention only; the
  gradient all-to-all stays deferred. Our runtime's comm_opt=False (every communication synchronous,
  training.fsep.schedule) is a stronger ablation: variant serial_comm (simulate's comm_opt=False), no paper bar.
- no_even: laer's planner with the priority-queue replica counts only (planner option candidates=priority).
- no_pq: laer's planner with N*C/E replicas per expert only (candidates=even).

Writes fig12.csv and fig12.png; the returned dict carries the headline rows (slowdown of each variant against LAER).
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
from experiments.config import AblationVariant
from experiments.laer_paper import paper_csv, paper_model, read_ablation, simulate, trace_samples
from experiments.tables import headline_row, rel_error, write_csv
from training.planner.laer import ReplicaCandidates
from training.sim import Prefetch

log = logging.getLogger(__name__)

# Variant -> the arguments of `experiments.laer_paper.simulate` that make it.
VARIANTS: dict[AblationVariant, dict] = {
    AblationVariant.FSDP: {"system": "fsdp_ep"},
    AblationVariant.LAER: {"system": "laer"},
    AblationVariant.no_comm_opt: {"system": "laer", "prefetch": Prefetch.unit},
    AblationVariant.serial_comm: {"system": "laer", "comm_opt": False},
    AblationVariant.no_even: {"system": "laer", "planner_options": {"candidates": ReplicaCandidates.priority}},
    AblationVariant.no_pq: {"system": "laer", "planner_options": {"candidates": ReplicaCandidates.even}},
}


def ablation_rows(ours: dict[str, float], paper: dict[str, float]) -> list[dict]:
    """Per variant: iteration seconds ours / paper and their error, and the slowdown against LAER (variant / LAER)
    ours / paper and its error. Slowdowns need the LAER row on that side; a missing number is None."""
    rows = []
    for v, t in ours.items():
        p = paper.get(v)
        slow = t / ours["LAER"] if "LAER" in ours else None
        slow_p = p / paper["LAER"] if p is not None and "LAER" in paper else None
        rows.append({"variant": v, "ours_s": t, "paper_s": p, "error": rel_error(t, p), "slowdown_ours": slow,
                     "slowdown_paper": slow_p, "slowdown_error": rel_error(slow, slow_p)})
    return rows


def run(cfg: DictConfig, out_dir: Path) -> dict:
    fc = cfg.fig12
    if int(fc.samples) < 1:
        raise ValueError(f"fig12.samples must be >= 1, got {fc.samples}")
    try:
        model = paper_model(fc.model)
    except ValueError as err:
        raise ValueError(f"fig12.model: {err}") from None
    variants = [AblationVariant(v) for v in fc.variants]
    if not variants:
        raise ValueError("fig12.variants is empty")
    files = ensure_files(locate_data_dir(cfg.paths.data_dir, os.environ), [fc.expert_trace], cfg.paths.fallback,
                         synthetic_dir=out_dir / "synthetic_data", seed=cfg.seed)
    trace = load_expert_trace(files.path(fc.expert_trace))
    path = paper_csv(cfg, fc.paper_results)
    paper = read_ablation(path) if path is not None else {}
    samples = trace_samples(trace, int(fc.samples))

    ours = {}
    for v in tqdm(variants, desc="fig12", leave=False):
        results = simulate(model, trace=trace, samples=samples, **VARIANTS[v])
        ours[v.value] = float(np.mean([r.iteration_s for r in results]))
    rows = ablation_rows(ours, paper)
    write_csv(out_dir / "fig12.csv", rows)
    log.info("%s", format_table(rows, fc.model, len(samples)))
    plot(rows, fc.model, len(samples), out_dir / "fig12.png")
    return {"rows": rows, "samples": samples, "headline": headline(rows)}


def headline(rows: list[dict]) -> list[dict]:
    """LAER's iteration time and every other variant's slowdown against it."""
    out = []
    for r in sorted(rows, key=lambda r: r["variant"] != "LAER"):  # LAER first
        if r["variant"] == "LAER":
            out.append(headline_row("Fig. 12", "LAER, mixtral-8x7b-e8k2", "iteration time (s)", r["ours_s"],
                                    r["paper_s"]))
        elif r["slowdown_ours"] is not None:
            out.append(headline_row("Fig. 12", f"{r['variant']}, mixtral-8x7b-e8k2", "slowdown vs LAER (x)",
                                    r["slowdown_ours"], r["slowdown_paper"]))
    return out


def _f(x, spec: str) -> str:
    return "" if x is None else format(x, spec)


def format_table(rows: list[dict], model: str, samples: int) -> str:
    lines = [f"Fig. 12 ablation, {model}, simulated (mean of {samples} trace samples) vs the paper",
             f"{'variant':12s} {'ours s':>8s} {'paper s':>8s} {'error':>7s} {'slow ours':>9s} {'slow paper':>10s}"
             f" {'error':>7s}"]
    for r in rows:
        lines.append(f"{r['variant']:12s} {r['ours_s']:8.3f} {_f(r['paper_s'], '8.3f'):>8s} {_f(r['error'], '+7.1%'):>7s}"
                     f" {_f(r['slowdown_ours'], '9.3f'):>9s} {_f(r['slowdown_paper'], '10.3f'):>10s}"
                     f" {_f(r['slowdown_error'], '+7.1%'):>7s}")
    return "\n".join(lines)


def plot(rows: list[dict], model: str, samples: int, path: Path) -> None:
    fig, axes = plotting.figure(1, 2, "Ablation vs the LAER-MoE paper (Fig. 12)",
                                {"model": model, "ours": f"simulated, mean of {samples} trace samples",
                                 "paper": "32 A100, wikitext, aux 0"})
    x = np.arange(len(rows))
    names = [r["variant"] for r in rows]
    for ax, (ours_key, paper_key, label) in zip(axes[0], (("ours_s", "paper_s", "iteration time (s)"),
                                                          ("slowdown_ours", "slowdown_paper", "slowdown vs LAER (x)"))):
        ours = [np.nan if r[ours_key] is None else r[ours_key] for r in rows]
        paper = [np.nan if r[paper_key] is None else r[paper_key] for r in rows]
        ax.bar(x - 0.2, ours, 0.4, label="ours (simulated)")
        ax.bar(x + 0.2, paper, 0.4, label="paper", color="lightgray", edgecolor="black", hatch="//")
        ax.set_xticks(x, names, rotation=20)
        ax.set(ylabel=label)
        if ours_key == "slowdown_ours":
            plotting.hline(ax, 1.0)
        plotting.legend(ax)
    plotting.save(fig, path)
