"""OServe workload predictor: how well each predictor forecasts the next interval's per-type arrival rates.

    loadwise experiment=oserve/predict

For every trace (Azure 2023 conv and code by default) and bin size (10 s, 30 s, 60 s):
  1. request types from the workload's type model (serving.workload.build_workload: k-means over log lengths);
  2. per-type rates in full bins (common.stats.type_rates) -> a [T, J] series;
  3. each predictor fitted on the head (predict.head_share of the intervals) and scored by RRMSE on the tail, one step
     ahead (serving.predict.rolling_forecast: every forecast reads the real previous intervals);
  4. beside them the Poisson floor, the RRMSE even the true rate would score with Poisson arrivals in a bin.
An hour-long trace has only 58 one-minute bins: the window shrinks (a logged warning) to leave the head
predict.min_train_pairs (window, next) pairs. Prints the table beside the paper (per-type LSTM 5.0%, moving average 43%,
aggregate LSTM ~40%) and how the bin size moves the figures. Returns the results (experiments.run writes
results.json) and writes results.csv, forecast.png (forecast vs actual per type at the best bin) and rrmse_by_bin.png.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from common.datapaths import Source, ensure_files, locate_data_dir
from common.stats import type_rates
from common.traces import load_request_trace
from experiments import plotting
from experiments.config import require
from experiments.tables import write_csv
from serving.predict import PredictorKind, make_predictor, poisson_floor, rolling_forecast, rrmse
from serving.workload import build_workload

log = logging.getLogger(__name__)

# The paper's predictor claims (RRMSE of next-interval per-type rates); its traces and bin size were not recorded.
PAPER = {
    "source": "the OServe paper's predictor accuracy as quoted in this project's OServe temporal task",
    "rrmse": {PredictorKind.lstm.value: 0.050, PredictorKind.moving_average.value: 0.43,
              PredictorKind.aggregate_lstm.value: 0.40},
}
PLOTTED = (PredictorKind.lstm, PredictorKind.aggregate_lstm, PredictorKind.moving_average, PredictorKind.ema)


def check_config(cfg: DictConfig) -> None:
    """One-line errors naming the key, for values the schema's types cannot rule out."""
    p = cfg.predict

    require(len(p.traces) > 0, "predict.traces", "must list at least one trace", list(p.traces))
    require(len(p.bins_s) > 0 and all(b > 0 for b in p.bins_s), "predict.bins_s", "must list bin sizes > 0",
            list(p.bins_s))
    require(0 < p.head_share < 1, "predict.head_share", "must lie in (0, 1)", p.head_share)
    require(p.window >= 1, "predict.window", "must be >= 1", p.window)
    require(p.min_train_pairs >= 1, "predict.min_train_pairs", "must be >= 1", p.min_train_pairs)
    require(p.num_types >= 1, "predict.num_types", "must be >= 1", p.num_types)
    require(len(p.predictors) > 0, "predict.predictors", "must list at least one predictor", list(p.predictors))
    require(0 < p.ema_alpha <= 1, "predict.ema_alpha", "must lie in (0, 1]", p.ema_alpha)
    require(p.seasonal_period_s is None or p.seasonal_period_s > 0, "predict.seasonal_period_s", "must be > 0 or null",
         p.seasonal_period_s)


def options(cfg: DictConfig, kind: PredictorKind, window: int, bin_s: float, where: str) -> dict:
    """make_predictor options of `kind` from the config; a seasonal period past the window is clamped, loudly."""
    p = cfg.predict
    if kind in (PredictorKind.lstm, PredictorKind.aggregate_lstm):
        return dict(OmegaConf.to_container(p.lstm))
    if kind is PredictorKind.ema:
        return {"alpha": float(p.ema_alpha)}
    if kind is PredictorKind.seasonal_naive:
        period = window if p.seasonal_period_s is None else max(1, int(round(p.seasonal_period_s / bin_s)))
        if period > window:
            log.warning("%s: seasonal period %d intervals exceeds the window %d; clamped to %d", where, period,
                        window, window)
            period = window
        return {"period": period}
    return {}


def score_series(cfg: DictConfig, rates: np.ndarray, bin_s: float, where: str) -> dict | None:
    """Fit every configured predictor on the head of `rates` [T, J] and score it on the tail; None (with a warning)
    when the series is too short to leave both a training pair and a tail."""
    p = cfg.predict
    t = rates.shape[0]
    head = int(p.head_share * t)
    if head < 2 or head >= t:
        log.warning("%s: %d intervals leave no head of >= 2 and tail of >= 1 (head_share %.2f); skipped", where, t,
                    p.head_share)
        return None
    window = int(p.window)
    if head - window < p.min_train_pairs:
        window = max(1, head - int(p.min_train_pairs))
        log.warning("%s: the head has %d intervals, too few for window %d and %d training pairs; window clamped to "
                    "%d (%d pairs)", where, head, p.window, p.min_train_pairs, window, head - window)
    actual = rates[head:]
    if not actual.mean() > 0:
        log.warning("%s: no arrivals in the scored tail; skipped", where)
        return None
    out = {"intervals": t, "head": head, "tail": t - head, "window": window, "train_pairs": head - window,
           "mean_rate": float(actual.sum(axis=1).mean()), "poisson_floor": poisson_floor(actual, bin_s),
           "rrmse": {}, "fit_cpu_s": {}, "forecast": {}}
    for kind in p.predictors:
        kind = PredictorKind(kind)
        c0 = time.process_time()
        pred = make_predictor(kind, window, **options(cfg, kind, window, bin_s, where)).fit(rates[:head])
        c1 = time.process_time()
        f = rolling_forecast(pred, rates, head)
        out["rrmse"][kind.value] = rrmse(actual, f)
        out["fit_cpu_s"][kind.value] = c1 - c0
        out["forecast"][kind.value] = f
    out["actual"] = actual
    return out


def bin_effect(name: str, cells: dict[float, dict]) -> str:
    """One sentence per trace: how each figure moves from the shortest to the longest bin, and what moves it."""
    bins = sorted(cells)
    lo, hi = cells[bins[0]], cells[bins[-1]]
    parts = [f"{k} {100 * lo['rrmse'][k]:.0f}% -> {100 * hi['rrmse'][k]:.0f}%" for k in lo["rrmse"]]
    text = (f"{name}: from {bins[0]:g} s to {bins[-1]:g} s bins, RRMSE {', '.join(parts)}; the Poisson floor falls "
            f"{100 * lo['poisson_floor']:.0f}% -> {100 * hi['poisson_floor']:.0f}% (longer bins average out arrival "
            f"noise) while the head shrinks {lo['head']} -> {hi['head']} intervals (window {lo['window']} -> "
            f"{hi['window']}, {lo['train_pairs']} -> {hi['train_pairs']} training pairs per type)")
    lstm, ma = PredictorKind.lstm.value, PredictorKind.moving_average.value
    if lstm in lo["rrmse"] and ma in lo["rrmse"]:
        gaps = ", ".join(f"{100 * (cells[b]['rrmse'][lstm] - cells[b]['rrmse'][ma]):+.0f}" for b in bins)
        text += f"; per-type LSTM minus moving average, in points at {'/'.join(f'{b:g}' for b in bins)} s: {gaps}"
    return text


def plot_by_bin(path: Path, cells: dict[str, dict[float, dict]], settings: dict) -> None:
    fig, axes = plotting.figure(1, len(cells), "One-step-ahead RRMSE of per-type rates by bin size", settings)
    for ax, (name, by_bin) in zip(axes[0], cells.items()):
        bins = sorted(by_bin)
        kinds = list(by_bin[bins[0]]["rrmse"])
        for i, k in enumerate(kinds):
            (ln,) = plotting.line(ax, bins, [100 * by_bin[b]["rrmse"][k] for b in bins], k, index=i)
            if k in PAPER["rrmse"]:  # the paper's figure, in the same colour as ours
                ax.axhline(100 * PAPER["rrmse"][k], color=ln.get_color(), linewidth=0.9, linestyle=(0, (1, 2)),
                           label=f"paper {k} {100 * PAPER['rrmse'][k]:g}%")
        plotting.line(ax, bins, [100 * by_bin[b]["poisson_floor"] for b in bins], "Poisson floor", index=len(kinds),
                      color="gray")
        ax.set_xlabel("bin size (s)")
        ax.set_ylabel("RRMSE (%)")
        ax.set_title(name)
        plotting.legend(ax, outside=True)
    plotting.save(fig, path)


def plot_forecast(path: Path, best: dict[str, tuple[float, dict]], settings: dict) -> None:
    ncols = max(c["actual"].shape[1] for _, c in best.values())
    fig, axes = plotting.figure(len(best), ncols, "Forecast vs actual per request type (tail, best bin)", settings,
                                panel_size=(4.0, 2.8))
    for row, (name, (bin_s, cell)) in enumerate(best.items()):
        t = (cell["head"] + np.arange(cell["tail"])) * bin_s / 60.0
        for j in range(ncols):
            ax = axes[row][j]
            if j >= cell["actual"].shape[1]:
                ax.set_visible(False)
                continue
            ax.plot(t, cell["actual"][:, j], color="black", linewidth=1.2, label="actual")
            for i, k in enumerate(k for k in PLOTTED if k.value in cell["forecast"]):
                plotting.line(ax, t, cell["forecast"][k.value][:, j], f"{k.value} {100 * cell['rrmse'][k.value]:.0f}%",
                              index=i, markersize=2, linewidth=1.0)
            ax.set_title(f"{name} · type {j} · {bin_s:g} s bins")
            ax.set_xlabel("minute of trace")
            ax.set_ylabel("req/s")
            if j == 0:
                plotting.legend(ax)
    plotting.save(fig, path)


def run(cfg: DictConfig, out_dir: Path) -> dict:
    c0, t0 = time.process_time(), time.perf_counter()
    check_config(cfg)
    p = cfg.predict
    files = ensure_files(locate_data_dir(cfg.paths.data_dir, os.environ), list(p.traces), cfg.paths.fallback,
                         synthetic_dir=out_dir / "synthetic_data")
    if files.source is Source.synthetic:
        log.warning("predictor figures below are on SYNTHETIC stand-in traces, not the Azure traces")
    cells: dict[str, dict[float, dict]] = {}
    rows = []
    for rel in p.traces:
        trace = load_request_trace(files.path(rel), "azure")
        name = Path(rel).stem.replace("AzureLLMInferenceTrace_", "")
        wl = build_workload(trace, num_types=int(p.num_types), seed=int(cfg.seed))
        for bin_s in p.bins_s:
            bin_s = float(bin_s)
            full = int(trace.duration_s // bin_s)  # the last, partial bin would read as a rate drop
            rates = type_rates(trace.arrival_s, wl.labels, wl.num_types, bin_s)[:full]
            cell = score_series(cfg, rates, bin_s, f"{name} at {bin_s:g} s bins")
            if cell is None:
                continue
            cells.setdefault(name, {})[bin_s] = cell
            for k, v in cell["rrmse"].items():
                rows.append({"trace": name, "bin_s": bin_s, "predictor": k, "rrmse": round(v, 5),
                             "paper_rrmse": PAPER["rrmse"].get(k, ""), "poisson_floor": round(cell["poisson_floor"], 5),
                             "window": cell["window"], "head": cell["head"], "tail": cell["tail"],
                             "train_pairs": cell["train_pairs"], "types": wl.num_types,
                             "mean_rate_rps": round(cell["mean_rate"], 4), "fit_cpu_s": round(cell["fit_cpu_s"][k], 3)})
    if not rows:
        raise ValueError("config key 'predict.bins_s': every (trace, bin) series was too short to score; use shorter "
                         "bins or longer traces")

    # The table, beside the paper
    log.info("%-6s %6s %-15s %8s %8s %8s %7s %5s %9s", "trace", "bin_s", "predictor", "RRMSE", "paper", "floor",
             "window", "pairs", "fit_cpu_s")
    for r in rows:
        paper = f"{100 * r['paper_rrmse']:.1f}%" if r["paper_rrmse"] != "" else "-"
        log.info("%-6s %6g %-15s %7.1f%% %8s %7.1f%% %7d %5d %9.2f", r["trace"], r["bin_s"], r["predictor"],
                 100 * r["rrmse"], paper, 100 * r["poisson_floor"], r["window"], r["train_pairs"], r["fit_cpu_s"])
    effects = [bin_effect(name, by_bin) for name, by_bin in cells.items()]
    for e in effects:
        log.info("bin size: %s", e)

    # Best bin per trace: where the per-type LSTM (else the best predictor) scores lowest
    def key(cell):
        return cell["rrmse"].get(PredictorKind.lstm.value, min(cell["rrmse"].values()))

    best = {name: min(by_bin.items(), key=lambda kv: key(kv[1])) for name, by_bin in cells.items()}
    settings = {"types": int(p.num_types), "head": f"{p.head_share:.0%}", "window": int(p.window),
                "data": files.source.value}
    write_csv(out_dir / "results.csv", rows)
    plot_by_bin(out_dir / "rrmse_by_bin.png", cells, settings)
    plot_forecast(out_dir / "forecast.png", best, settings)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    log.info("oserve/predict: %d rows in %.1f s CPU (%.1f s wall); results.csv, rrmse_by_bin.png, forecast.png in %s",
             len(rows), cpu, wall, out_dir)
    return {
        "data": files.summary(),
        "paper": PAPER,
        "table": rows,
        "best_bin_s": {name: b for name, (b, _) in best.items()},
        "bin_effect": effects,
        "cpu_s": cpu,
        "wall_s": wall,
    }
