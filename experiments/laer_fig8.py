"""LAER-MoE Fig. 8: end-to-end iteration time of the paper's six models under Megatron EP, FSDP+EP, FlexMoE, LAER and
ours (laer_plus), simulated (`experiments.laer_paper.simulate`) beside the paper's own times.

The paper ran every model on two datasets (C4, wikitext) at two aux-loss weights (0, 1e-4): four settings per model.
Our loads come from one trace (the SmartMoE expert counts, `fig8.samples` iterations spread over training, each
rescaled to the model), so the four settings of a model share one simulated time per system; each table row sets that
one number beside each of the paper's four. laer_plus has no paper number.

Tables (CSV, and printed): times.csv, per (model, dataset, aux, system): our mean and std over the samples, the
paper's mean, relative error (ours - paper) / paper. speedups.csv, per setting: each system's speedup over
megatron_ep (its time / the system's), laer's over fsdp_ep and flexmoe, and laer_plus's over laer; ours (ratio of mean
times) beside the paper's, error, and whether it is within `fig8.tolerance`. summary.csv, per speedup pair: how many
settings meet the tolerance, and the geometric-mean speedup over the settings, ours and paper.
Figures: fig8.png (one panel per model: time per system, ours beside the paper's four), fig8_speedups.png (our speedups
against the paper's, y = x and the tolerance band).
"""

from __future__ import annotations

import logging
import os
import time
from itertools import product
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from scipy.stats import gmean
from tqdm import tqdm

from common.datapaths import ensure_files, locate_data_dir
from common.traces import load_expert_trace
from experiments import plotting
from experiments.laer_paper import (
    AUX_LOSSES,
    DATASETS,
    MODELS,
    paper_csv,
    paper_model,
    read_e2e,
    simulate,
    trace_samples,
)
from experiments.tables import headline_row, rel_error, write_csv
from training.sim import SimResult, SystemName

log = logging.getLogger(__name__)

BASELINE = SystemName.megatron_ep.value  # every system's speedup is over it, as in the paper's figure
SETTINGS = tuple(product(DATASETS, AUX_LOSSES))  # the paper's four (dataset, aux loss) runs per model


def speedup_pairs(systems: list[str]) -> list[tuple[str, str]]:
    """(system, baseline) pairs whose speedup (baseline time / system time) the tables report, of the systems run."""
    pairs = [(s, BASELINE) for s in systems if s != BASELINE]
    pairs += [("laer", b) for b in ("fsdp_ep", "flexmoe")]
    pairs += [("laer_plus", "laer")]
    return [p for p in dict.fromkeys(pairs) if p[0] in systems and p[1] in systems]


TERMS = ("attention", "expert", "alltoall", "exposed")  # training.sim.Breakdown fields that sum to an iteration


def iteration_terms(results: list[SimResult]) -> dict[str, float]:
    """Mean seconds per iteration of each Breakdown term, and the LM head, over the samples: where the time goes."""
    out = {f"{t}_s": float(np.mean([getattr(r.iteration, t) for r in results])) for t in TERMS}
    out["head_s"] = float(np.mean([r.microbatches * r.head_s for r in results]))
    return out


def time_rows(sim: dict[tuple[str, str], np.ndarray], paper: dict[tuple[str, str, float, str], float],
              terms: dict[tuple[str, str], dict[str, float]] | None = None) -> list[dict]:
    """Per (model, dataset, aux, system): our iteration seconds (mean, std over samples; one trace, so the same for
    every setting of a model), the paper's, the error, then our split of the time (`iteration_terms`, if given).
    sim: (model, system) -> [S] seconds; paper: read_e2e's."""
    rows = []
    for (model, system), t in sim.items():
        for dataset, aux in SETTINGS:
            p = paper.get((dataset, model, aux, system))
            rows.append({"model": model, "dataset": dataset, "aux_loss": aux, "system": system, "samples": len(t),
                         "ours_s": float(np.mean(t)), "ours_std_s": float(np.std(t)), "paper_s": p,
                         "error": rel_error(float(np.mean(t)), p), **(terms or {}).get((model, system), {})})
    return rows


def speedup_rows(sim: dict[tuple[str, str], np.ndarray], paper: dict[tuple[str, str, float, str], float],
                 tolerance: float) -> list[dict]:
    """Per (model, setting, pair): baseline time / system time, ours (ratio of the mean times) and the paper's."""
    models = list(dict.fromkeys(m for m, _ in sim))
    systems = list(dict.fromkeys(s for _, s in sim))
    rows = []
    for model, (dataset, aux), (system, base) in product(models, SETTINGS, speedup_pairs(systems)):
        ours = float(np.mean(sim[model, base]) / np.mean(sim[model, system]))
        pb, ps = paper.get((dataset, model, aux, base)), paper.get((dataset, model, aux, system))
        p = pb / ps if pb is not None and ps is not None else None
        err = rel_error(ours, p)
        rows.append({"model": model, "dataset": dataset, "aux_loss": aux, "system": system, "baseline": base,
                     "ours": ours, "paper": p, "error": err, "within": None if err is None else abs(err) <= tolerance})
    return rows


def summary_rows(speedups: list[dict]) -> list[dict]:
    """Per (system, baseline): settings with a paper number, how many meet the tolerance, and geometric-mean speedups
    over those settings (ours over all settings where the paper has none)."""
    out = []
    for system, base in dict.fromkeys((r["system"], r["baseline"]) for r in speedups):
        sel = [r for r in speedups if (r["system"], r["baseline"]) == (system, base)]
        both = [r for r in sel if r["paper"] is not None]
        ours = float(gmean([r["ours"] for r in both or sel]))
        p = float(gmean([r["paper"] for r in both])) if both else None
        out.append({"system": system, "baseline": base, "settings": len(both),
                    "within": sum(r["within"] for r in both), "geomean_ours": ours, "geomean_paper": p,
                    "geomean_error": rel_error(ours, p)})
    return out


def headline(summary: list[dict], speedups: list[dict]) -> list[dict]:
    """The rows a reader checks first: each system's geometric-mean speedup over megatron_ep, and LAER over FSDP+EP
    on Mixtral-8x7B e8k2 (the paper's geometric mean over its four settings)."""
    models = len({r["model"] for r in speedups})
    rows = [headline_row("Fig. 8", (f"geo-mean over {s['settings']} settings" if s["settings"] else
                                    f"geo-mean over {models} model(s), no paper number"),
                         f"speedup of {s['system']} over {s['baseline']}", s["geomean_ours"], s["geomean_paper"])
            for s in summary if s["baseline"] == BASELINE or s["system"] == "laer_plus"]
    sel = [r for r in speedups if (r["model"], r["system"], r["baseline"]) == ("mixtral-8x7b-e8k2", "laer", "fsdp_ep")]
    if sel:
        p = [r["paper"] for r in sel if r["paper"] is not None]
        paper = float(gmean(p)) if p else None
        rows.append(headline_row("Fig. 8", "mixtral-8x7b-e8k2 (paper: geo-mean of its 4 settings)",
                                 "speedup of laer over fsdp_ep", sel[0]["ours"], paper))
    return rows


def _check(f: DictConfig) -> tuple[list[str], list[str], int]:
    models, systems = list(f.models), list(f.systems)
    known = [s.value for s in SystemName]
    for key, names, valid in (("models", models, list(MODELS)), ("systems", systems, known)):
        bad = [x for x in names if x not in valid]
        if bad or not names:
            raise ValueError(f"config key 'fig8.{key}': unknown {bad or 'empty list'}; known: {valid}")
    if int(f.samples) < 1:
        raise ValueError(f"config key 'fig8.samples' must be >= 1, got {f.samples}")
    if not 0 < f.tolerance < 1:
        raise ValueError(f"config key 'fig8.tolerance' must be in (0, 1), got {f.tolerance}")
    if f.laer_plus_budget_s is not None and not f.laer_plus_budget_s >= 0:
        raise ValueError(f"config key 'fig8.laer_plus_budget_s' must be >= 0 or null, got {f.laer_plus_budget_s}")
    return models, systems, int(f.samples)


def _paper(cfg: DictConfig) -> tuple[dict, str | None]:
    """read_e2e of fig8.paper_csv, else {} (the paper columns stay empty; `laer_paper.paper_csv` warns)."""
    path = paper_csv(cfg, cfg.fig8.paper_csv)
    return ({}, None) if path is None else (read_e2e(path), str(path))


def run(cfg: DictConfig, out_dir: Path) -> dict:
    f = cfg.fig8
    models, systems, count = _check(f)
    out_dir = Path(out_dir)
    data_dir = locate_data_dir(cfg.paths.data_dir, os.environ)
    files = ensure_files(data_dir, [f.expert_trace], cfg.paths.fallback, synthetic_dir=out_dir / "synthetic_data",
                         seed=cfg.seed)
    trace = load_expert_trace(files.path(f.expert_trace))
    samples = trace_samples(trace, count)
    paper, paper_path = _paper(cfg)
    options = {"laer_plus": {} if f.laer_plus_budget_s is None else {"time_budget_s": float(f.laer_plus_budget_s)}}
    log.info("fig8: %d models x %s, trace iterations %s (%s); paper: %s", len(models), systems,
             [int(trace.iterations[s]) for s in samples], files.describe(), paper_path or "none")

    sim, terms, cpu = {}, {}, {}
    for model, system in tqdm(list(product(models, systems)), desc="fig8 (model, system)", unit="run"):
        c0 = time.process_time()
        res = simulate(paper_model(model), system, trace, samples, planner_options=options.get(system))
        sim[model, system] = np.array([r.iteration_s for r in res])
        terms[model, system] = iteration_terms(res)
        cpu[f"{model}/{system}"] = time.process_time() - c0

    times = time_rows(sim, paper, terms)
    speedups = speedup_rows(sim, paper, float(f.tolerance))
    summary = summary_rows(speedups)
    write_csv(out_dir / "times.csv", times)
    write_csv(out_dir / "speedups.csv", speedups)
    write_csv(out_dir / "summary.csv", summary)
    log.info("\n%s", format_tables(times, speedups, summary, float(f.tolerance), len(samples)))
    plot_times(times, out_dir / "fig8.png", len(samples))
    plot_speedups(speedups, out_dir / "fig8_speedups.png", float(f.tolerance))
    return {
        "settings": {"models": models, "systems": systems, "trace_samples": samples,
                     "trace_iterations": [int(trace.iterations[s]) for s in samples], "data": files.summary(),
                     "paper_csv": paper_path, "tolerance": float(f.tolerance),
                     "note": "one trace: a model's simulated time is the same for every (dataset, aux) setting"},
        "times": times, "speedups": speedups, "summary": summary, "headline": headline(summary, speedups),
        "cpu_s": cpu,
    }


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:+.0%}"


def _setting(dataset: str, aux: float) -> str:
    return f"{dataset}/aux={aux:g}"


def format_tables(times: list[dict], speedups: list[dict], summary: list[dict], tolerance: float, samples: int) -> str:
    """Iteration times and speedups, one line per (model, system) with the paper's four settings side by side."""
    heads = [_setting(d, a) for d, a in SETTINGS]
    out = [f"Fig. 8 iteration time (s): ours = mean ± std over {samples} trace sample(s), one trace, so the same for "
           "every setting; paper (our error) per setting",
           f"{'model':21s} {'system':12s} {'ours':>15s}  " + "  ".join(f"{h:>17s}" for h in heads)]
    by = {}
    for r in times:
        by.setdefault((r["model"], r["system"]), []).append(r)
    for (model, system), rs in by.items():
        cells = [f"{r['paper_s']:7.2f} ({_pct(r['error']):>6s})" if r["paper_s"] is not None else "-" for r in rs]
        out.append(f"{model:21s} {system:12s} {rs[0]['ours_s']:7.2f} ± {rs[0]['ours_std_s']:5.2f}  "
                   + "  ".join(f"{c:>17s}" for c in cells))
    out += ["", "Our iteration time split (s): compute, token all-to-all, exposed parameter / gradient communication",
            f"{'model':21s} {'system':12s} " + " ".join(f"{t:>9s}" for t in TERMS + ("head",))]
    for (model, system), rs in by.items():
        out.append(f"{model:21s} {system:12s} " + " ".join(f"{rs[0].get(t + '_s', np.nan):9.2f}"
                                                           for t in TERMS + ("head",)))
    out += ["", "Fig. 8 speedups (baseline time / system time): ours, then paper (our error) per setting",
            f"{'model':21s} {'speedup':24s} {'ours':>6s}  " + "  ".join(f"{h:>17s}" for h in heads)]
    by = {}
    for r in speedups:
        by.setdefault((r["model"], r["system"], r["baseline"]), []).append(r)
    for (model, system, base), rs in by.items():
        cells = [f"{r['paper']:6.2f} ({_pct(r['error']):>6s})" if r["paper"] is not None else "-" for r in rs]
        out.append(f"{model:21s} {system + ' / ' + base:24s} {rs[0]['ours']:6.2f}  "
                   + "  ".join(f"{c:>17s}" for c in cells))
    out += ["", f"Per speedup: settings within ±{tolerance:.0%} of the paper's, geometric-mean speedup ours vs paper"]
    for s in summary:
        paper = "no paper number" if s["geomean_paper"] is None else (
            f"paper {s['geomean_paper']:.2f} ({_pct(s['geomean_error'])}); {s['within']}/{s['settings']} settings "
            f"within ±{tolerance:.0%}")
        out.append(f"  {s['system'] + ' over ' + s['baseline']:26s} ours {s['geomean_ours']:.2f}, {paper}")
    return "\n".join(out)


HATCHES = ("//", "\\\\", "..", "xx")  # the paper's four settings, in SETTINGS order


def plot_times(times: list[dict], path: Path, samples: int) -> None:
    """One panel per model: per system a solid bar (ours, ± std over samples) and four hatched bars (the paper's
    settings); above ours, its error against the mean of the paper's four."""
    models = list(dict.fromkeys(r["model"] for r in times))
    systems = list(dict.fromkeys(r["system"] for r in times))
    ncols = min(3, len(models))
    nrows = -(-len(models) // ncols)
    fig, axes = plotting.figure(nrows, ncols, "LAER-MoE Fig. 8: iteration time, simulated (solid) beside the paper "
                                "(hatched)", {"trace samples": samples, "cluster": "4 x 8 A100-80GB",
                                              "labels": "our error vs the paper's mean"}, panel_size=(5.2, 3.4))
    width = 0.8 / (1 + len(SETTINGS))
    for k, model in enumerate(models):
        ax = axes[k // ncols, k % ncols]
        for i, system in enumerate(systems):
            rs = [r for r in times if (r["model"], r["system"]) == (model, system)]
            ours = rs[0]["ours_s"]
            ax.bar(i, ours, width, yerr=rs[0]["ours_std_s"], color=f"C{i}", capsize=2,
                   label="ours" if i == 0 else None)
            papers = [r["paper_s"] for r in rs]
            for j, p in enumerate(papers):
                if p is not None:
                    ax.bar(i + (j + 1) * width, p, width, color="white", edgecolor=f"C{i}", hatch=HATCHES[j],
                           label=f"paper {_setting(*SETTINGS[j])}" if i == 0 else None)
            known = [p for p in papers if p is not None]
            if known:
                ax.annotate(_pct(rel_error(ours, float(np.mean(known)))), (i, ours + rs[0]["ours_std_s"]), xytext=(0, 2),
                            textcoords="offset points", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(np.arange(len(systems)) + len(SETTINGS) * width / 2, systems, rotation=20, fontsize=8)
        ax.set(title=model, ylabel="iteration time (s)")
        if k % ncols == ncols - 1 or k == len(models) - 1:
            plotting.legend(ax, outside=True)
    for k in range(len(models), nrows * ncols):
        axes[k // ncols, k % ncols].set_visible(False)
    plotting.save(fig, path)


def plot_speedups(speedups: list[dict], path: Path, tolerance: float) -> None:
    """Our speedup against the paper's, one point per setting, one marker per (system, baseline); y = x and ±tolerance."""
    fig, axes = plotting.figure(1, 1, "LAER-MoE Fig. 8: speedups, simulated vs the paper's",
                                {"points": "model x dataset x aux loss", "band": f"±{tolerance:.0%}"},
                                panel_size=(5.6, 4.4))
    ax = axes[0, 0]
    pairs = list(dict.fromkeys((r["system"], r["baseline"]) for r in speedups))
    pts = [r for r in speedups if r["paper"] is not None]
    for i, pair in enumerate(pairs):
        sel = [r for r in pts if (r["system"], r["baseline"]) == pair]
        if sel:
            plotting.line(ax, [r["paper"] for r in sel], [r["ours"] for r in sel], f"{pair[0]} / {pair[1]}", index=i,
                          linestyle="none")
    values = [v for r in pts for v in (r["paper"], r["ours"])] or [1.0]
    lo, hi = min(values) * 0.9, max(values) * 1.1
    x = np.linspace(lo, hi, 50)
    ax.plot(x, x, color="black", linewidth=0.8, label="y = x")
    ax.fill_between(x, x * (1 - tolerance), x * (1 + tolerance), color="gray", alpha=0.2,
                    label=f"±{tolerance:.0%}")
    ax.set(xlabel="paper speedup", ylabel="simulated speedup", xlim=(lo, hi), ylim=(lo, hi))
    if not pts:
        ax.text(0.5, 0.5, "no paper numbers", transform=ax.transAxes, ha="center")
    plotting.legend(ax, outside=True)
    plotting.save(fig, path)
