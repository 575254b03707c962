"""Quickstart (the first look at the data): load statistics of the real expert-load trace and a real request trace.

    loadwise experiment=quickstart [quickstart.num_request_types=5] [paths.data_dir=DIR]

Expert load (SmartMoE training run): per (iteration, layer) the max/mean load over experts, with tokens summed over
source ranks and micro-batches; and per-device token imbalance under static expert parallelism on N devices.
Requests (Azure 2023 CSV, or Mooncake JSONL by the .jsonl suffix): k-means request types over (log input, log output)
and each type's arrival rate per interval.

Writes expert_load_imbalance.csv, device_load_imbalance.csv, request_types.csv, request_type_rates.csv and
quickstart.png into out_dir. Notation: I iterations, R source ranks, L layers, M micro-batches, E experts, N devices,
K request types, B time bins.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.datapaths import ensure_files, locate_data_dir
from common.stats import fit_request_types, imbalance, type_rates
from common.traces import ExpertLoadTrace, RequestTrace, load_azure_trace, load_expert_trace, load_mooncake_trace
from experiments import plotting

log = logging.getLogger(__name__)


def expert_imbalance(trace: ExpertLoadTrace) -> np.ndarray:
    """[I, L] max/mean over experts of the tokens each expert received (all ranks, all micro-batches)."""
    return imbalance(trace.counts.sum(axis=(1, 3)))  # [I, L, E] -> [I, L]


def device_imbalance(trace: ExpertLoadTrace, num_devices: int) -> np.ndarray:
    """[I, L] max/mean over devices of received tokens under static EP: device d holds experts
    d*E/N .. (d+1)*E/N - 1 (the layout of training.placement.static_ep_placement)."""
    per_expert = trace.counts.sum(axis=(1, 3))  # [I, L, E]
    i, n_l, e = per_expert.shape
    return imbalance(per_expert.reshape(i, n_l, num_devices, e // num_devices).sum(axis=-1))


def device_counts(trace: ExpertLoadTrace) -> list[int]:
    """Device counts to report: half and all of the trace's source ranks (16 -> 8 and 16), those that divide E."""
    return [n for n in sorted({max(1, trace.num_ranks // 2), trace.num_ranks}) if trace.num_experts % n == 0]


def load_requests(path: Path) -> RequestTrace:
    return load_mooncake_trace(path) if path.suffix == ".jsonl" else load_azure_trace(path)


def run(cfg, out_dir: str | Path) -> dict:
    q = cfg.quickstart
    out_dir = Path(out_dir)
    # A fresh clone without data still runs: on fetched files, else on synthetic stand-ins (a warning says so).
    files = ensure_files(locate_data_dir(cfg.paths.data_dir, os.environ), [q.expert_trace, q.request_trace],
                         cfg.paths.fallback, synthetic_dir=out_dir / "synthetic_data", seed=q.seed)
    with tqdm(total=5, desc="quickstart", unit="step", leave=False) as steps:
        # 1. Expert load.
        steps.set_postfix_str("loading expert trace")
        expert = load_expert_trace(files.path(q.expert_trace))
        steps.update()
        steps.set_postfix_str("expert statistics")
        imb = expert_imbalance(expert)  # [I, L]
        dev = {n: device_imbalance(expert, n) for n in device_counts(expert)}  # N -> [I, L]
        steps.update()

        # 2. Requests.
        steps.set_postfix_str("loading request trace")
        req = load_requests(files.path(q.request_trace))
        steps.update()
        steps.set_postfix_str("request types")
        types = fit_request_types(req.input_tokens, req.output_tokens, k=q.num_request_types, seed=q.seed)
        labels = types.assign(req.input_tokens, req.output_tokens)
        counts = np.bincount(labels, minlength=types.num_types)
        rates = type_rates(req.arrival_s, labels, types.num_types, q.interval_s)  # [B, K] requests/s
        steps.update()

        # 3. Files.
        steps.set_postfix_str("writing CSV and PNG")
        _write_csvs(out_dir, expert, imb, dev, types, counts, rates, q.interval_s)
        _plot(out_dir / "quickstart.png", expert, imb, types, rates, q.interval_s)
        steps.update()

    _log_expert(expert, imb, dev)
    _log_requests(req, types, counts, rates, q.interval_s)
    log.info("data: %s", files.describe())
    return {
        "data_source": files.source.value,
        "data": files.summary(),
        "expert_trace": expert.source,
        "num_iterations": expert.num_iterations,
        "num_layers": expert.num_layers,
        "imbalance_first_iteration_mean": float(imb[0].mean()),
        "imbalance_last_iteration_mean": float(imb[-1].mean()),
        "imbalance_median": float(np.median(imb)),
        "device_imbalance_mean": {n: float(v.mean()) for n, v in dev.items()},
        "request_trace": req.source,
        "num_requests": len(req),
        "duration_s": req.duration_s,
        "mean_rate_rps": len(req) / max(req.duration_s, 1e-9),
        "type_centers_tokens": types.centers_tokens().round(1).tolist(),
        "type_shares": (counts / counts.sum()).round(4).tolist(),
        "out_dir": str(out_dir),
    }


def _write_csvs(out_dir, expert, imb, dev, types, counts, rates, interval_s) -> None:
    with open(out_dir / "expert_load_imbalance.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["iteration", "layer", "max_over_mean"])
        for i, it in enumerate(expert.iterations):
            w.writerows([int(it), layer, repr(float(imb[i, layer]))] for layer in range(expert.num_layers))
    with open(out_dir / "device_load_imbalance.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["num_devices", "iteration", "layer", "max_over_mean"])
        for n, v in dev.items():
            for i, it in enumerate(expert.iterations):
                w.writerows([n, int(it), layer, repr(float(v[i, layer]))] for layer in range(expert.num_layers))
    with open(out_dir / "request_types.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["type", "center_input_tokens", "center_output_tokens", "num_requests", "share"])
        for k, (ci, co) in enumerate(types.centers_tokens()):
            w.writerow([k, repr(float(ci)), repr(float(co)), int(counts[k]), repr(float(counts[k] / counts.sum()))])
    with open(out_dir / "request_type_rates.csv", "w", newline="") as f:
        w = csv.writer(f)
        # minute: start of the bin. The last bin may extend past the last arrival, so its rate reads low.
        w.writerow(["minute", "type", "rate_rps"])
        for b in range(rates.shape[0]):
            w.writerows([repr(b * interval_s / 60.0), k, repr(float(rates[b, k]))] for k in range(rates.shape[1]))


def _log_expert(expert: ExpertLoadTrace, imb: np.ndarray, dev: dict) -> None:
    lines = []
    i, r, n_l, m, e = expert.counts.shape
    lines.append(f"Expert load: {expert.source}")
    lines.append(
        f"  {i} iterations ({expert.iterations[0]}..{expert.iterations[-1]}) x {r} ranks x {n_l} layers x {m} micro-batches x {e} experts"
    )
    lines.append("  max/mean expert load per layer over training (tokens summed over ranks and micro-batches):")
    lines.append(f"  {'layer':>5} {'mean':>7} {'min':>7} {'max':>7} {'first':>7} {'last':>7}")
    for layer in range(n_l):
        x = imb[:, layer]
        lines.append(f"  {layer:>5} {x.mean():7.2f} {x.min():7.2f} {x.max():7.2f} {x[0]:7.2f} {x[-1]:7.2f}")
    lines.append(
        f"  {'all':>5} {imb.mean():7.2f} {imb.min():7.2f} {imb.max():7.2f} {imb[0].mean():7.2f} {imb[-1].mean():7.2f}"
    )
    lines.append("  per-device token imbalance (max/mean received tokens, static EP, over iterations and layers):")
    for n, v in dev.items():
        lines.append(
            f"    N={n:<3} ({e // n} experts/device): mean {v.mean():.2f}  median {np.median(v):.2f}  max {v.max():.2f}"
            f"  first iteration {v[0].mean():.2f}  last iteration {v[-1].mean():.2f}"
        )
    log.info("\n".join(lines))


def _log_requests(req: RequestTrace, types, counts, rates, interval_s) -> None:
    lines = [f"Requests: {req.source}"]
    lines.append(f"  {len(req)} requests over {req.duration_s:.0f} s ({len(req) / max(req.duration_s, 1e-9):.2f} req/s)")
    lines.append(f"  request types (k-means over log input, log output); rates per {interval_s:g} s bin, req/s:")
    lines.append(f"  {'type':>4} {'input':>7} {'output':>7} {'share':>6} {'mean':>6} {'min':>6} {'max':>6}")
    for k, (ci, co) in enumerate(types.centers_tokens()):
        x = rates[:, k]
        lines.append(
            f"  {k:>4} {ci:7.0f} {co:7.0f} {counts[k] / counts.sum():6.1%} {x.mean():6.2f} {x.min():6.2f} {x.max():6.2f}"
        )
    log.info("\n".join(lines))


def _plot(path: Path, expert: ExpertLoadTrace, imb: np.ndarray, types, rates: np.ndarray, interval_s: float) -> None:
    settings = {"expert trace": Path(expert.source).name, "request types": types.num_types, "bins": f"{interval_s:g} s"}
    fig, axes = plotting.figure(1, 2, "Quickstart: load in the real traces", settings, panel_size=(5.5, 3.6))
    a, b = axes[0]
    layers = sorted(set(np.linspace(0, expert.num_layers - 1, min(4, expert.num_layers)).round().astype(int).tolist()))
    for i, layer in enumerate(layers):
        plotting.line(a, expert.iterations, imb[:, layer], f"layer {layer}", index=i, linestyle="-",
                      markevery=max(1, len(imb) // 12))
    a.set(xlabel="training iteration", ylabel="max / mean expert load", title="Expert-load imbalance over training")
    plotting.hline(a, 1.0)
    plotting.legend(a)
    edges = np.arange(rates.shape[0] + 1) * interval_s / 60.0  # bin edges in minutes
    for k, (ci, co) in enumerate(types.centers_tokens()):
        b.stairs(rates[:, k], edges, label=f"type {k}: {ci:.0f} in / {co:.0f} out tokens", lw=1.2)
    b.set(xlabel="minute", ylabel="requests / s", title=f"Request rate per type ({interval_s:g} s bins)")
    plotting.legend(b)
    plotting.save(fig, path)
