"""OServe temporal experiment: the closed-loop controller on phase-shifting workloads against its baselines.

    loadwise experiment=oserve/temporal

For every phase-shifting trace (temporal.cycles: phases drawn on Azure conv / code slices and the arXiv / ShareGPT
length pools, temporal.change mixed in at each phase boundary), in the same simulator (vLLM V1-like engines):
  oserve          the controller: forecast (temporal.predictor) -> OServe plan -> switch plan -> switch when the
                  predicted gain over controller.horizon_s exceeds the switching cost; affinity dispatch
  oserve_oracle   the same with the real next-interval rates (separates prediction error from the policy)
  oserve_static   OServe's initial plan kept throughout (no switching)
  vllm_reload     homogeneous plans on the same forecasts and rule, each switch a cold reload from storage (serving
                  nothing meanwhile; in-flight requests restart); least-outstanding routing
  llumnix         the best static deployment, requests and their KV migrated between replicas to balance load
  best_static     the homogeneous deployment with the lowest simulated P99 on the whole trace
Then the temporal-sensitivity sweep: P99 best_static / oserve as the change between phases grows.
Returns the results (experiments.run writes results.json) and writes results.csv, timeline.csv, forecast.csv,
sensitivity.csv, timeline.png (P99 over time with switch markers), forecast.png (forecast vs actual per type) and
sensitivity.png.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from common.datapaths import ensure_files, locate_data_dir
from common.stats import type_rates
from common.traces import RequestTrace, load_request_trace
from experiments import plotting, reference
from experiments.config import require
from experiments.oserve_spatial import (
    _data_path,
    best_static,
    build_cost,
    engine_config,
    library_config,
)
from experiments.tables import headline_row, write_csv
from serving.control import (
    Controller,
    ControllerConfig,
    ForecastPlanner,
    Oracle,
    PlannerKind,
    SwitchMode,
    balance_moves,
    check_controller,
    check_history,
    kv_transfer_s,
)
from serving.scheduler import Problem, SchedulerConfig
from serving.sim import SLO, Dispatcher
from serving.sim.closedloop import ClosedLoopResult, run_closed_loop
from serving.sim.metrics import request_latencies
from serving.workload import PhaseSource, build_workload, load_length_pool, phase_shift, replace_lengths

log = logging.getLogger(__name__)

PAPER = reference.load("oserve_temporal_paper.json")
BASELINES = ("best_static", "vllm_reload", "llumnix")  # the headline ratios: baseline P99 / oserve P99


def check_config(cfg: DictConfig) -> None:
    """One-line errors naming the key, for values the schema's types cannot rule out."""
    check_spatial_subset(cfg)
    t = cfg.temporal

    names = [s.value for s in PhaseSource]
    require(len(t.cycles) > 0 or t.user_trace, "temporal.cycles", "must list at least one cycle", list(t.cycles))
    for c in t.cycles:
        require(len(c) > 0 and all(s in names for s in c), "temporal.cycles", f"entries must be lists of {names}",
                list(c))
    require(t.num_phases >= 1, "temporal.num_phases", "must be >= 1", t.num_phases)
    require(t.phase_s > 0, "temporal.phase_s", "must be > 0", t.phase_s)
    require(0 <= t.change <= 1, "temporal.change", "must lie in [0, 1]", t.change)
    require(all(0 <= c <= 1 for c in t.sensitivity_changes), "temporal.sensitivity_changes", "must lie in [0, 1]",
         list(t.sensitivity_changes))
    require(t.load > 0, "temporal.load", "must be > 0", t.load)
    require(t.window >= 1, "temporal.window", "must be >= 1", t.window)
    require(t.migration_interval_s > 0, "temporal.migration_interval_s", "must be > 0", t.migration_interval_s)
    require(t.migration_threshold >= 0, "temporal.migration_threshold", "must be >= 0", t.migration_threshold)
    require(t.migration_max_moves >= 0, "temporal.migration_max_moves", "must be >= 0", t.migration_max_moves)
    require(t.p99_bin_s > 0, "temporal.p99_bin_s", "must be > 0", t.p99_bin_s)
    require(t.rebuild_s >= 0, "temporal.rebuild_s", "must be >= 0", t.rebuild_s)
    require(t.train_phases >= 1, "temporal.train_phases", "must be >= 1", t.train_phases)
    try:
        check_controller(library_config(cfg.controller, ControllerConfig))
    except ValueError as e:
        raise ValueError(f"config key 'controller.{str(e).split('.', 1)[1]}") from None


def check_spatial_subset(cfg: DictConfig) -> None:
    """The checks of the keys this experiment shares with oserve/spatial."""
    o = cfg.oserve
    for key, ok, what, v in (
            ("oserve.max_model_len", o.max_model_len >= 128, "must be >= 128 tokens", o.max_model_len),
            ("oserve.slo.ttft_s", o.slo.ttft_s > 0, "must be > 0", o.slo.ttft_s),
            ("oserve.slo.tpot_s", o.slo.tpot_s > 0, "must be > 0", o.slo.tpot_s),
            ("workload.num_types", cfg.workload.num_types >= 1, "must be >= 1", cfg.workload.num_types),
            ("num_gpus", cfg.num_gpus >= 1, "must be >= 1", cfg.num_gpus)):
        if not ok:
            raise ValueError(f"config key '{key}' {what}, got {v}")


# ---- workloads ------------------------------------------------------------------------------------------------------


def needed_files(cfg) -> list[str]:
    t = cfg.temporal
    if t.user_trace:
        return [t.user_trace] if not Path(t.user_trace).is_absolute() else []
    used = {s for c in t.cycles for s in c} | {"conv"}
    paths = {"conv": t.conv_trace, "code": t.code_trace, "arxiv": t.arxiv_pool, "sharegpt": t.sharegpt_pool}
    return [paths[s] for s in sorted(used)] + ([t.conv_trace] if "arxiv" in used or "sharegpt" in used else [])


def source_traces(cfg, data_dir: Path) -> dict[str, RequestTrace]:
    """Every phase source at the conversation trace's rate (so a phase shift moves the mix, not the rate)."""
    t = cfg.temporal
    conv = load_request_trace(_data_path(data_dir, t.conv_trace), "azure")
    rate = len(conv) / max(conv.duration_s, 1e-9)
    out = {"conv": conv}
    used = {s for c in t.cycles for s in c}
    if "code" in used:
        code = load_request_trace(_data_path(data_dir, t.code_trace), "azure")
        out["code"] = code.scale_rate(rate / (len(code) / max(code.duration_s, 1e-9)))
    for name, rel in (("arxiv", t.arxiv_pool), ("sharegpt", t.sharegpt_pool)):
        if name in used:
            out[name] = replace_lengths(conv, load_length_pool(_data_path(data_dir, rel), name), 1.0,
                                        seed=int(cfg.seed) + 7)
    return out


def load_factor(trace: RequestTrace, cm, cfg) -> float:
    """The rate factor at which the best homogeneous deployment for each interval's own rates runs at
    temporal.load of its LP capacity, at the 90th percentile over the intervals: the busy phases load the GPUs that
    much, and a single deployment for the whole trace has to compromise between them."""
    from serving.scheduler import homogeneous_candidates

    interval = float(cfg.controller.interval_s)
    wl = build_workload(trace, int(cfg.workload.num_types), seed=int(cfg.seed))
    planner = ForecastPlanner(cm, wl.mean_input, wl.mean_output, int(cfg.num_gpus), PlannerKind.homogeneous,
                              _scheduler_cfg(cfg))
    series = type_rates(trace.arrival_s, wl.labels, wl.num_types, interval)[: max(int(trace.duration_s // interval), 1)]
    util = []
    for lam in series:
        prob = planner.problem(lam)
        util.append(min(-prob.score(d)[1] for d in homogeneous_candidates(prob, int(cfg.num_gpus))))
    return float(cfg.temporal.load) / max(float(np.quantile(util, 0.9)), 1e-9)


def cycle_traces(cfg, src: dict[str, RequestTrace], cycle, change: float, cm) -> tuple[RequestTrace, RequestTrace]:
    """(the trace served, the trace the predictor trains on) of one cycle. The sources are sped up or slowed down
    together to temporal.load (so the phases keep their length); the training trace draws on the same sources from
    temporal.train_offset_s on, for temporal.train_phases phases."""
    t = cfg.temporal
    make = lambda pools, n, seed, off: phase_shift(pools, n, float(t.phase_s), change, seed=seed,  # noqa: E731
                                                   offset_s=off)
    f = load_factor(make([src[s] for s in cycle], int(t.num_phases), int(cfg.seed), 0.0), cm, cfg)
    pools = [src[s].scale_rate(f) for s in cycle]
    return (make(pools, int(t.num_phases), int(cfg.seed), 0.0),
            make(pools, int(t.train_phases), int(cfg.seed) + 1, float(t.train_offset_s)))


# ---- one trace, every policy ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One trace prepared for the policies: types, per-interval rates, the planners."""

    name: str
    trace: RequestTrace
    labels: np.ndarray  # [R]
    series: np.ndarray  # [T, J] observed rates per controller interval
    train_series: np.ndarray  # [T', J] the predictor's training series (same types)
    oserve: ForecastPlanner
    homogeneous: ForecastPlanner
    problem: Problem  # the whole trace (90th-percentile rates): best_static's candidates


def _scheduler_cfg(cfg) -> SchedulerConfig:
    s = library_config(cfg.oserve.scheduler, SchedulerConfig)
    s.finalists = 0  # a forecast has no trace to replay: the LP's best is the plan
    return s


def prepare(name: str, trace: RequestTrace, train: RequestTrace, cm, cfg) -> Case:
    interval = float(cfg.controller.interval_s)
    wl = build_workload(trace, int(cfg.workload.num_types), seed=int(cfg.seed), rate_quantile=0.9, interval_s=interval)
    J = wl.num_types
    num_bins = int(np.ceil((trace.duration_s + 1e-9) / interval))
    series = type_rates(trace.arrival_s, wl.labels, J, interval, num_bins)
    from common.stats import fit_request_types

    types = fit_request_types(trace.input_tokens, trace.output_tokens, k=J, seed=int(cfg.seed))
    train_labels = types.assign(train.input_tokens, train.output_tokens)
    train_series = type_rates(train.arrival_s, train_labels, J, interval)
    check_history(len(series), max(int(cfg.temporal.window), 1), "temporal.window")
    sched = _scheduler_cfg(cfg)
    mk = lambda kind: ForecastPlanner(cm, wl.mean_input, wl.mean_output, int(cfg.num_gpus), kind, sched)  # noqa: E731
    return Case(name, trace, wl.labels, series, train_series, mk(PlannerKind.oserve), mk(PlannerKind.homogeneous),
                Problem.from_workload(cm, wl, sched))


def make_forecaster(cfg, train_series: np.ndarray):
    """The predictor named by temporal.predictor, fitted on the training series."""
    from serving.predict import make_predictor

    return make_predictor(cfg.temporal.predictor, int(cfg.temporal.window)).fit(train_series)


def _switch_planner(cm, rebuild_s: float):
    """serving.switching.plan_switch with the model and cluster bound in (the controller's SwitchPlanner)."""
    from serving.switching import InflightRequest, SwitchOptions, plan_switch

    options = SwitchOptions(rebuild_s=float(rebuild_s))

    def plan(current, target, inflight):
        reqs = [InflightRequest(r.id, r.replica, r.context_tokens, r.remaining_tokens) for r in inflight]
        return plan_switch(current, target, cm.model, cm.cluster, reqs, options)

    return plan


def _reload_s(cm):
    from serving.switching import cold_reload_s

    return lambda target: cold_reload_s(target, cm.model, cm.cluster)


def controller(case: Case, cm, cfg, forecaster, planner: PlannerKind, switching: SwitchMode) -> Controller:
    c = library_config(cfg.controller, ControllerConfig)
    c.planner, c.switching = planner, switching
    p = case.oserve if planner is PlannerKind.oserve else case.homogeneous
    return Controller(c, forecaster, p, plan_switch=_switch_planner(cm, cfg.temporal.rebuild_s) if switching is SwitchMode.fast else None,
                      reload_s=_reload_s(cm) if switching is SwitchMode.reload else None)


def closed_loop(case: Case, cm, cfg, initial, policy, dispatch: Dispatcher, interval_s: float,
                start: int) -> ClosedLoopResult:
    tr = case.trace
    series = case.series if interval_s == float(cfg.controller.interval_s) else type_rates(
        tr.arrival_s, case.labels, case.series.shape[1], interval_s,
        int(np.ceil((tr.duration_s + 1e-9) / interval_s)))
    return run_closed_loop(tr.arrival_s, tr.input_tokens, tr.output_tokens, case.labels, series, interval_s, initial,
                           cm.cost, policy, dispatch, engine_config(cfg), int(cfg.oserve.max_model_len),
                           library_config(cfg.oserve.slo, SLO), start=start)


def run_controller(case: Case, cm, cfg, ctrl: Controller, dispatch: Dispatcher) -> ClosedLoopResult:
    """The controller from the plan for the first window's mean rates; decisions once a window of history exists."""
    start = max(int(ctrl.forecaster.window), 1)
    initial = ctrl.planner.plan(case.series[:start].mean(0))
    policy = (lambda t, hist, cur, inflight: ctrl.decide(t, hist, cur, inflight)) \
        if ctrl.cfg.switching is not SwitchMode.none else None
    return closed_loop(case, cm, cfg, initial, policy, dispatch, float(cfg.controller.interval_s), start)


def run_llumnix(case: Case, cm, cfg, dep) -> ClosedLoopResult:
    """Fixed homogeneous replicas (the best static deployment); every migration interval, requests and their KV move
    from the busiest to the idlest replica (KV copy time from the topology)."""
    t = cfg.temporal
    plan = case.problem.plan(dep, "llumnix")
    kvb = cm.model.kv_bytes_per_token

    def policy(now, hist, cur, inflight):
        return balance_moves(now, inflight, len(cur.replicas),
                             lambda s, d, tok: kv_transfer_s(tok, kvb, cur.devices[s], cur.devices[d], cm.cluster),
                             float(t.migration_threshold), int(t.migration_max_moves))

    return closed_loop(case, cm, cfg, plan, policy, Dispatcher.least_outstanding, float(t.migration_interval_s), 1)


def run_case(case: Case, cm, cfg, forecaster, oracle: bool = True, migration: bool = True) -> dict:
    """Every policy on one trace -> name -> ClosedLoopResult."""
    static = best_static(case.trace, case.labels, cm, case.problem, int(cfg.num_gpus), cfg)
    out = {"best_static": closed_loop(case, cm, cfg, case.problem.plan(static, "homogeneous"), None,
                                      Dispatcher.least_outstanding, float(cfg.controller.interval_s), 1)}
    aff = cfg.oserve.dispatch
    out["oserve"] = run_controller(case, cm, cfg, controller(case, cm, cfg, forecaster, PlannerKind.oserve,
                                                             SwitchMode.fast), aff)
    out["oserve_static"] = run_controller(case, cm, cfg, controller(case, cm, cfg, forecaster, PlannerKind.oserve,
                                                                    SwitchMode.none), aff)
    if oracle:
        out["oserve_oracle"] = run_controller(case, cm, cfg, controller(case, cm, cfg, Oracle(case.series),
                                                                        PlannerKind.oserve, SwitchMode.fast), aff)
    out["vllm_reload"] = run_controller(case, cm, cfg, controller(case, cm, cfg, forecaster, PlannerKind.homogeneous,
                                                                  SwitchMode.reload), Dispatcher.least_outstanding)
    if migration:
        out["llumnix"] = run_llumnix(case, cm, cfg, static)
    return out


def metrics(res: ClosedLoopResult) -> dict:
    s = res.sim.summary
    switches = [d for d in res.decisions if getattr(d, "switch", False)]
    moves = sum(len(d.moves) for d in res.decisions if hasattr(d, "moves"))
    return {"p99_latency_s": s["p99_latency_s"], "p50_latency_s": s["p50_latency_s"],
            "mean_latency_s": s["mean_latency_s"], "p99_ttft_s": s["p99_ttft_s"],
            "slo_attainment": s["slo_attainment"], "switches": len(switches), "migrations": moves,
            "kv_moved": int(res.sim.moved.sum()) if res.sim.moved is not None else 0,
            "plans": " -> ".join(p.describe() for _, p in res.plans)}


def p99_over_time(res: ClosedLoopResult, bin_s: float) -> list[tuple[float, float, int]]:
    """(bin start, P99 end-to-end latency of the requests arriving in it, their count)."""
    sim = res.sim
    e2e = request_latencies(sim.arrival_s, sim.first_token_s, sim.finish_s, np.ones(len(sim.arrival_s)))["e2e_s"]
    b = np.floor(sim.arrival_s / bin_s).astype(int)
    return [(float(k * bin_s), float(np.percentile(e2e[b == k], 99)), int((b == k).sum()))
            for k in range(int(b.max()) + 1) if np.any(b == k)]


# ---- the experiment -------------------------------------------------------------------------------------------------


def setup(cfg, out_dir: Path):
    check_config(cfg)
    data_dir = ensure_files(locate_data_dir(cfg.paths.data_dir, os.environ), needed_files(cfg), cfg.paths.fallback,
                            synthetic_dir=out_dir / "synthetic_data").root
    cm = build_cost(cfg, data_dir, int(cfg.num_gpus))
    return data_dir, cm


def cases(cfg, data_dir, cm, change: float, only: int | None = None) -> list[Case]:
    """The user trace (temporal.user_trace: served and trained on), or one case per cycle (only: that cycle)."""
    t = cfg.temporal
    if t.user_trace:
        tr = load_request_trace(_data_path(data_dir, t.user_trace), cfg.workload.format)
        return [prepare(Path(t.user_trace).stem, tr, tr, cm, cfg)]
    src = source_traces(cfg, data_dir)
    cycles = list(t.cycles) if only is None else [t.cycles[only]]
    return [prepare("/".join(c), *cycle_traces(cfg, src, c, change, cm), cm, cfg) for c in cycles]


def settings(cfg) -> dict:
    return {"model": cfg.oserve.model, "cluster": cfg.cluster.preset.name, "GPUs": int(cfg.num_gpus),
            "interval": f"{cfg.controller.interval_s:g}s", "horizon": f"{cfg.controller.horizon_s:g}s",
            "predictor": cfg.temporal.predictor.value, "change": cfg.temporal.change}


def ratios(by_case: dict[str, dict], baseline: str, policy: str = "oserve") -> dict | None:
    v = {k: r[baseline]["p99_latency_s"] / r[policy]["p99_latency_s"] for k, r in by_case.items()
         if baseline in r and policy in r}
    if not v:
        return None
    return {"max": max(v.values()), "mean": float(np.mean(list(v.values()))), "min": min(v.values()), "per_case": v}


def run(cfg: DictConfig, out_dir: Path) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    data_dir, cm = setup(cfg, out_dir)
    change = float(cfg.temporal.change)
    table, rows, timeline, fc_rows, by_case, switch_marks = {}, [], [], [], {}, {}
    for case in tqdm(cases(cfg, data_dir, cm, change), desc="oserve temporal"):
        fcst = make_forecaster(cfg, case.train_series)
        res = run_case(case, cm, cfg, fcst)
        by_case[case.name] = {p: metrics(r) for p, r in res.items()}
        for p, r in res.items():
            rows.append({"trace": case.name, "change": change, "policy": p, "requests": len(case.trace),
                         "rate_rps": len(case.trace) / max(case.trace.duration_s, 1e-9),
                         **by_case[case.name][p]})
            for start, p99, n in p99_over_time(r, float(cfg.temporal.p99_bin_s)):
                timeline.append({"trace": case.name, "policy": p, "t_s": start, "p99_latency_s": p99, "requests": n})
            switch_marks[(case.name, p)] = [tt for tt, _ in r.plans[1:]]
        for d in res["oserve"].decisions:
            for j, f in enumerate(d.forecast):
                fc_rows.append({"trace": case.name, "interval": d.interval, "t_s": d.time_s, "type": j, "forecast": f,
                                "actual": float(case.series[d.interval, j]) if d.interval < len(case.series) else
                                float("nan"), "switch": d.switch, "gain_req_s": d.gain_s, "cost_req_s": d.cost_s})
        table[case.name] = res
    sens = sensitivity(cfg, data_dir, cm, by_case)
    out = {
        "policies": by_case,
        **{f"p99_speedup_vs_{b}": ratios(by_case, b) for b in BASELINES},
        "p99_speedup_oracle_vs_static": ratios(by_case, "best_static", "oserve_oracle"),
        "switching_gain": ratios(by_case, "oserve_static"),
        "sensitivity": sens,
        "paper": PAPER,
        "config": settings(cfg),
        "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
    }
    out["headline"] = headline_rows(out)
    write_csv(out_dir / "results.csv", rows)
    write_csv(out_dir / "timeline.csv", timeline)
    write_csv(out_dir / "forecast.csv", fc_rows)
    write_csv(out_dir / "sensitivity.csv", sens)
    plot_timeline(out_dir / "timeline.png", timeline, switch_marks, list(by_case), settings(cfg))
    plot_forecast(out_dir / "forecast.png", fc_rows, settings(cfg))
    if sens:
        plot_sensitivity(out_dir / "sensitivity.png", sens, settings(cfg))
    log.info("\n".join(report(out)))
    return out


def headline_rows(out: dict) -> list[dict]:
    """P99 speedup of the closed loop over each baseline (mean and max over the traces) beside the paper's, and the
    sensitivity sweep's least and most change beside the paper's ends."""
    rows = []
    for b, key in (("best_static", "p99_speedup_vs_static"), ("vllm_reload", "p99_speedup_vs_reload"),
                   ("llumnix", "p99_speedup_vs_migration")):
        s = out.get(f"p99_speedup_vs_{b}")
        if s:
            traces = ", ".join(s["per_case"])
            rows += [headline_row("OServe temporal", f"vs {b} ({traces})", f"P99 speedup, {k}", s[k], PAPER[key][k])
                     for k in ("mean", "max") if k in PAPER[key]]
    # Why a speedup is near 1 or not: how often the closed loop changed the deployment (the paper's source of gain).
    rows += [headline_row("OServe temporal", name, "deployment switches (oserve)", m["oserve"]["switches"])
             for name, m in out["policies"].items() if "oserve" in m]
    sens, ps = out["sensitivity"], PAPER["sensitivity_speedup_vs_static"]
    if len(sens) > 1:
        rows += [headline_row("OServe temporal", f"sensitivity, change {r['change']:g} ({end.replace('_', ' ')})",
                              "P99 speedup vs best_static", r["speedup_vs_static"], ps[end])
                 for r, end in ((sens[0], "least_change"), (sens[-1], "most_change"))]
    return rows


def sensitivity(cfg, data_dir, cm, headline: dict) -> list[dict]:
    """The first cycle at each temporal.sensitivity_changes: P99 best_static / oserve (and / oserve_static)."""
    t = cfg.temporal
    if not t.sensitivity_changes or t.user_trace:
        return []
    rows = []
    first = "/".join(t.cycles[0])
    for change in tqdm(list(t.sensitivity_changes), desc="sensitivity", leave=False):
        if float(change) == float(t.change) and first in headline:
            m = headline[first]
        else:
            case = cases(cfg, data_dir, cm, float(change), only=0)[0]
            res = run_case(case, cm, cfg, make_forecaster(cfg, case.train_series), oracle=False, migration=False)
            m = {p: metrics(r) for p, r in res.items()}
        rows.append({"change": float(change), "trace": first, "p99_static_s": m["best_static"]["p99_latency_s"],
                     "p99_oserve_s": m["oserve"]["p99_latency_s"],
                     "p99_oserve_static_s": m["oserve_static"]["p99_latency_s"],
                     "p99_reload_s": m["vllm_reload"]["p99_latency_s"], "switches": m["oserve"]["switches"],
                     "speedup_vs_static": m["best_static"]["p99_latency_s"] / m["oserve"]["p99_latency_s"],
                     "speedup_vs_no_switch": m["oserve_static"]["p99_latency_s"] / m["oserve"]["p99_latency_s"]})
    return sorted(rows, key=lambda r: r["change"])


def report(out: dict) -> list[str]:
    pols = ["oserve", "oserve_oracle", "oserve_static", "vllm_reload", "llumnix", "best_static"]
    lines = [f"OServe temporal ({out['config']['model']}, {out['config']['cluster']}, {out['config']['GPUs']} GPUs, "
             f"predictor {out['config']['predictor']}, change {out['config']['change']}); P99 s (switches)",
             f"  {'trace':22s}" + "".join(f"{p:>17s}" for p in pols)]
    for name, m in out["policies"].items():
        lines.append(f"  {name:22s}" + "".join(
            f"{m[p]['p99_latency_s']:11.1f} ({m[p]['switches'] or m[p]['migrations']:3d})" if p in m else f"{'-':>17s}"
            for p in pols))
    for b, key in (("best_static", "p99_speedup_vs_static"), ("vllm_reload", "p99_speedup_vs_reload"),
                   ("llumnix", "p99_speedup_vs_migration")):
        s, ref = out.get(f"p99_speedup_vs_{b}"), PAPER[key]
        if s:
            lines.append(f"  P99 {b}/oserve: mean {s['mean']:.2f}x, max {s['max']:.2f}x, min {s['min']:.2f}x"
                         f"   (paper: " + ", ".join(f"{k} {v:g}x" for k, v in ref.items()) + ")")
    g = out.get("switching_gain")
    if g:
        lines.append(f"  P99 oserve_static/oserve (what switching buys): mean {g['mean']:.2f}x, min {g['min']:.2f}x, "
                     f"max {g['max']:.2f}x")
    ps = PAPER["sensitivity_speedup_vs_static"]
    for r in out["sensitivity"]:
        lines.append(f"  sensitivity change {r['change']:.2f}: P99 static/oserve {r['speedup_vs_static']:.2f}x, "
                     f"no-switch/oserve {r['speedup_vs_no_switch']:.2f}x, {r['switches']} switches   "
                     f"(paper: {ps['least_change']:g}x -> {ps['most_change']:g}x as change grows)")
    lines.append(f"  wall {out['wall_s']:.0f} s, CPU {out['cpu_s']:.0f} s")
    return lines


# ---- plots ----------------------------------------------------------------------------------------------------------


def plot_timeline(path: Path, rows: list[dict], marks: dict, names: list[str], settings_: dict) -> None:
    fig, axes = plotting.figure(len(names), 1, "P99 latency over time (vertical lines: switches)", settings_,
                                panel_size=(9.0, 3.2))
    for i, name in enumerate(names):
        ax = axes[i, 0]
        for idx, p in enumerate(("oserve", "oserve_static", "vllm_reload", "llumnix", "best_static")):
            r = [x for x in rows if x["trace"] == name and x["policy"] == p]
            if r:
                plotting.line(ax, [x["t_s"] for x in r], [x["p99_latency_s"] for x in r], p, index=idx)
        for idx, p in ((0, "oserve"), (2, "vllm_reload")):
            for k, tt in enumerate(marks.get((name, p), [])):
                ax.axvline(tt, color=f"C{idx}", alpha=0.5, linestyle="--" if p == "oserve" else ":",
                           label=f"{p} switch" if k == 0 else None)
        ax.set(title=name, xlabel="time (s)", ylabel="P99 latency (s)", yscale="log")
        plotting.legend(ax, outside=True)
    plotting.save(fig, path)


def plot_forecast(path: Path, rows: list[dict], settings_: dict) -> None:
    if not rows:
        return
    first = rows[0]["trace"]
    types = sorted({r["type"] for r in rows})
    fig, axes = plotting.figure(len(types), 1, f"Forecast vs actual rate per type ({first})", settings_,
                                panel_size=(9.0, 2.4))
    for i, j in enumerate(types):
        r = [x for x in rows if x["trace"] == first and x["type"] == j]
        ax = axes[i, 0]
        plotting.line(ax, [x["t_s"] for x in r], [x["actual"] for x in r], "actual", index=0)
        plotting.line(ax, [x["t_s"] for x in r], [x["forecast"] for x in r], "forecast", index=1)
        ax.set(title=f"type {j}", xlabel="time (s)", ylabel="req/s")
        plotting.legend(ax)
    plotting.save(fig, path)


def plot_sensitivity(path: Path, rows: list[dict], settings_: dict) -> None:
    fig, axes = plotting.figure(1, 1, "Temporal sensitivity: P99 speedup by the change between phases", settings_,
                                panel_size=(6.0, 3.8))
    ax = axes[0, 0]
    plotting.line(ax, [r["change"] for r in rows], [r["speedup_vs_static"] for r in rows], "best_static / oserve", 0)
    plotting.line(ax, [r["change"] for r in rows], [r["speedup_vs_no_switch"] for r in rows],
                  "oserve_static / oserve", 1)
    ps = PAPER["sensitivity_speedup_vs_static"]
    plotting.reference(ax, [min(r["change"] for r in rows), max(r["change"] for r in rows)],
                       [ps["least_change"], ps["most_change"]], "paper (its own change scale)")
    plotting.hline(ax, 1.0)
    ax.set(xlabel="change between phases", ylabel="P99 speedup (x)")
    plotting.legend(ax)
    plotting.save(fig, path)
