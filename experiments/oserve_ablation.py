"""OServe ablation: what each component adds against the reload baseline, on the phase-shifting workloads.

    loadwise experiment=oserve/ablation

Four closed loops on the same forecasts, the same interval rule and the same simulator (oserve/temporal's traces):
  reload          homogeneous plans, least-outstanding routing, each switch a cold reload (vllm_reload)
  +heterogeneous  OServe's heterogeneous plans, still least-outstanding routing and cold reloads
  +dispatch       + OServe's dispatch (the plan's type affinity, re-solved on every forecast)
  +switching      + the switch planner (weights reused in place, KV moved) instead of cold reloads: full OServe
Gain of a variant = 1 - its P99 / reload's P99, averaged over the traces; the paper's cumulative 34% / 64% / +12%.
Returns the results (experiments.run writes results.json) and writes ablation.csv and ablation.png.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from experiments import plotting
from experiments.oserve_temporal import (
    PAPER,
    cases,
    controller,
    make_forecaster,
    metrics,
    run_controller,
    settings,
    setup,
)
from experiments.tables import write_csv
from serving.control import PlannerKind, SwitchMode
from serving.sim import Dispatcher

log = logging.getLogger(__name__)

# name -> (planner, dispatch (None: oserve.dispatch), switching); each adds one component to the one before.
VARIANTS = {
    "reload": (PlannerKind.homogeneous, Dispatcher.least_outstanding, SwitchMode.reload),
    "+heterogeneous": (PlannerKind.oserve, Dispatcher.least_outstanding, SwitchMode.reload),
    "+dispatch": (PlannerKind.oserve, None, SwitchMode.reload),
    "+switching": (PlannerKind.oserve, None, SwitchMode.fast),
}


def run(cfg: DictConfig, out_dir: Path) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    data_dir, cm = setup(cfg, out_dir)
    rows, per_case = [], {}
    for case in tqdm(cases(cfg, data_dir, cm, float(cfg.temporal.change)), desc="oserve ablation"):
        fc = make_forecaster(cfg, case.train_series)
        per_case[case.name] = {}
        for name, (planner, dispatch, switching) in VARIANTS.items():
            res = run_controller(case, cm, cfg, controller(case, cm, cfg, fc, planner, switching),
                                 dispatch or cfg.oserve.dispatch)
            m = metrics(res)
            per_case[case.name][name] = m
            rows.append({"trace": case.name, "variant": name, **m})
    for r in rows:
        base = per_case[r["trace"]]["reload"]["p99_latency_s"]
        r["p99_gain_vs_reload"] = 1 - r["p99_latency_s"] / base
    gains = {v: float(np.mean([r["p99_gain_vs_reload"] for r in rows if r["variant"] == v])) for v in VARIANTS}
    out = {"variants": per_case, "mean_p99_gain_vs_reload": gains, "paper": PAPER["ablation_p99_gain_vs_reload"],
           "config": settings(cfg), "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    write_csv(out_dir / "ablation.csv", rows)
    plot(out_dir / "ablation.png", gains, settings(cfg))
    log.info("\n".join(report(out)))
    return out


def report(out: dict) -> list[str]:
    p = out["paper"]
    paper = {"+heterogeneous": p["heterogeneous"], "+dispatch": p["optimal_dispatch"],
             "+switching": p["optimal_dispatch"] + p["switching_extra"]}
    names = list(VARIANTS)
    lines = [f"OServe ablation ({out['config']['model']}, {out['config']['GPUs']} GPUs, predictor "
             f"{out['config']['predictor']}); P99 s (switches) per trace, then the mean P99 gain vs reload",
             f"  {'trace':22s}" + "".join(f"{v:>18s}" for v in names)]
    for trace, m in out["variants"].items():
        lines.append(f"  {trace:22s}" + "".join(f"{m[v]['p99_latency_s']:12.1f} ({m[v]['switches']:3d})" for v in names))
    lines.append(f"  {'mean gain vs reload':22s}" + "".join(f"{out['mean_p99_gain_vs_reload'][v]:18.0%}" for v in names))
    lines.append(f"  {'paper (cumulative)':22s}{'':>18s}" + "".join(f"{paper[v]:18.0%}" for v in names[1:]))
    lines.append(f"  wall {out['wall_s']:.0f} s, CPU {out['cpu_s']:.0f} s")
    return lines


def plot(path: Path, gains: dict, settings_: dict) -> None:
    p = PAPER["ablation_p99_gain_vs_reload"]
    fig, axes = plotting.figure(1, 1, "Ablation: mean P99 gain vs the reload baseline", settings_,
                                panel_size=(6.0, 3.6))
    ax = axes[0, 0]
    names = list(VARIANTS)
    plotting.line(ax, list(range(len(names))), [100 * gains[v] for v in names], "ours (simulated)", index=0)
    plotting.reference(ax, [1, 2, 3], [100 * p["heterogeneous"], 100 * p["optimal_dispatch"],
                                       100 * (p["optimal_dispatch"] + p["switching_extra"])], "paper")
    ax.set_xticks(range(len(names)), names)
    ax.set(ylabel="P99 gain vs reload (%)")
    plotting.hline(ax, 0.0)
    plotting.legend(ax)
    plotting.save(fig, path)
