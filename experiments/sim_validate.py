"""Hydra task `sim_validate`: the training simulator (training.sim) against the real runs it can be checked on.

    python -m experiments.run experiment=laer/sim_validate [sim_validate.refit=true] [sim_validate.samples=5]

1. The LAER-MoE paper's runs (its artifact's CSVs): the calibration's two fitted parameters (GEMM efficiency,
   memory-bound bytes per token; training.sim.calibration) against mixtral-8x7b-e8k2's breakdown (per-rank
   all-to-all, expert and total seconds of FSDP, FLEX, LAER; `refit` reruns the least-squares fit, else the committed
   values are used), then the held-out errors: mixtral-8x7b-e16k4's breakdown and the 96 end-to-end settings
   (iteration time and LAER's speedup over each baseline). The simulator's all-to-all is measured as the paper's is
   (SimResult.device_alltoall_s: own transfer plus the wait for the slowest device's experts).
2. This machine: the `bench_train` and `bench_fsep` 2-rank gloo configurations simulated on the `local_cpu` preset
   with this machine's profile (common/profiles/local_cpu.json: matmul efficiency curve, gloo all-to-all bandwidth
   and latency) against their measured step times (experiments/reference/laer_cpu_bench.json, or a fresh
   results.json of either benchmark), and the ratios between systems.
Writes sim_validate_paper.csv, sim_validate_cpu.csv and sim_validate.png (and, through experiments.run,
results.json with a `headline` list).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.datapaths import ensure_files, locate_data_dir
from common.topology import local_cpu
from common.traces import ExpertLoadTrace, load_expert_trace
from experiments import laer_paper, plotting
from experiments.tables import headline_row, rel_error, write_csv
from training.model import model_config
from training.sim import PAPER, Bytes, Calibration, SimResult, profile_compute, simulate_iteration

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
FIT_MODEL = "mixtral-8x7b-e8k2"
HELD_OUT_MODEL = "mixtral-8x7b-e16k4"
BREAKDOWN_SYSTEMS = ("fsdp_ep", "flexmoe", "laer")
BASELINES = ("megatron_ep", "fsdp_ep", "flexmoe")
# bench_train / bench_fsep method -> simulated system (DeepSpeed's padded and dropping modes are not simulated).
CPU_SYSTEMS = {"ep": "megatron_ep", "fsdp_ep": "fsdp_ep", "fsep": "laer_plus", "balanced": "laer_plus"}


# ---- 1. the paper ----------------------------------------------------------------------------------------------


def breakdown_terms(results: list[SimResult]) -> tuple[float, float, float]:
    """(all-to-all, expert, total) seconds per iteration as the paper's breakdown reports them: the mean over ranks
    of each rank's all-to-all and expert time, and the iteration time; averaged over trace samples."""
    return (float(np.mean([r.device_alltoall_s.mean() for r in results])),
            float(np.mean([r.device_expert_s.mean() for r in results])),
            float(np.mean([r.iteration_s for r in results])))


def paper_terms(breakdown: dict, model: str, system: str) -> tuple[float, float, float]:
    rows = np.array(breakdown[(model, system)])[:, 1:]  # [ranks, (a2a, expert, total)]
    return float(rows[:, 0].mean()), float(rows[:, 1].mean()), float(rows[:, 2].mean())


def with_params(base: Calibration, gemm_efficiency: float, elementwise_bytes: float) -> Calibration:
    return replace(base, gemm_efficiency=float(gemm_efficiency),
                   non_expert=replace(base.non_expert, elementwise_bytes=float(elementwise_bytes)))


def breakdown_rows(trace: ExpertLoadTrace, samples: list[int], breakdown: dict, model: str,
                   calibration: Calibration, role: str) -> list[dict]:
    """One row per (system, term) of `model`'s breakdown: ours, the paper's, relative error."""
    cfg = laer_paper.paper_model(model)
    rows = []
    for system in BREAKDOWN_SYSTEMS:
        ours = breakdown_terms(laer_paper.simulate(cfg, system, trace, samples, calibration=calibration))
        paper = paper_terms(breakdown, model, system)
        for term, o, p in zip(("alltoall", "expert", "total"), ours, paper):
            rows.append({"part": f"breakdown ({role})", "model": model, "system": system, "dataset": "", "aux_loss": "",
                         "metric": f"{term}_s", "ours": o, "paper": p, "error": rel_error(o, p)})
    return rows


def fit(trace: ExpertLoadTrace, samples: list[int], breakdown: dict, base: Calibration) -> Calibration:
    """Least squares over (GEMM efficiency, memory-bound MB per token) of the relative errors of FIT_MODEL's nine
    breakdown numbers (3 systems x all-to-all / expert / total)."""
    from scipy.optimize import least_squares

    def residuals(x):
        cal = with_params(base, x[0], x[1] * 1e6)
        return [r["error"] for r in breakdown_rows(trace, samples, breakdown, FIT_MODEL, cal, "fit")]

    x0 = [base.gemm_efficiency, base.non_expert.elementwise_bytes / 1e6]
    sol = least_squares(residuals, x0, bounds=([0.2, 0.0], [1.0, 50.0]), diff_step=[0.02, 0.05], max_nfev=40)
    return with_params(base, sol.x[0], sol.x[1] * 1e6)


def e2e_rows(trace: ExpertLoadTrace, samples: list[int], e2e: dict, calibration: Calibration) -> list[dict]:
    """The 96 end-to-end settings (dataset x model x aux loss x system): iteration time, and per (dataset, model,
    aux loss) LAER's speedup over each baseline. The trace is one (the SmartMoE run's), so every dataset and aux-loss
    setting of a model shares our number."""
    ours = {}
    for model in tqdm(sorted({k[1] for k in e2e}), desc="e2e models", leave=False):
        cfg = laer_paper.paper_model(model)
        for system in sorted({k[3] for k in e2e if k[1] == model}):
            results = laer_paper.simulate(cfg, system, trace, samples, calibration=calibration)
            ours[(model, system)] = float(np.mean([r.iteration_s for r in results]))
    rows = []
    for (dataset, model, aux, system), paper in sorted(e2e.items()):
        o = ours[(model, system)]
        rows.append({"part": "e2e (held out)", "model": model, "system": system, "dataset": dataset, "aux_loss": aux,
                     "metric": "iteration_s", "ours": o, "paper": paper, "error": rel_error(o, paper)})
        if system == "laer":
            for base in BASELINES:
                if (dataset, model, aux, base) in e2e:
                    p = e2e[(dataset, model, aux, base)] / paper
                    s = ours[(model, base)] / o
                    rows.append({"part": "e2e (held out)", "model": model, "system": f"laer_vs_{base}",
                                 "dataset": dataset, "aux_loss": aux, "metric": "speedup", "ours": s, "paper": p,
                                 "error": rel_error(s, p)})
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per (part, metric, system): mean |error|, max |error|, share within +-10%, over its rows."""
    out = []
    for key in dict.fromkeys((r["part"], r["metric"], r["system"]) for r in rows):
        errs = np.abs([r["error"] for r in rows if (r["part"], r["metric"], r["system"]) == key])
        out.append({"part": key[0], "metric": key[1], "system": key[2], "n": int(errs.size),
                    "mean_abs_error": float(errs.mean()), "max_abs_error": float(errs.max()),
                    "within_10pct": float((errs <= 0.10).mean())})
    return out


# ---- 2. this machine -------------------------------------------------------------------------------------------


def load_measured(path: Path) -> dict:
    """The reference file: {"bench_train": results.json of bench_train, "bench_fsep": results.json of bench_fsep}
    (each {"config": ..., "results": ...}, as experiments.run writes them; either may be absent)."""
    try:
        ref = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"sim_validate.measured: no file at {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"sim_validate.measured: {path} is not valid JSON: {e}") from None
    for key in ("bench_train", "bench_fsep"):
        if key in ref and not {"config", "results"} <= set(ref[key]):
            raise ValueError(f"sim_validate.measured: {path}: {key!r} needs 'config' and 'results'")
    return ref


def bench_train_loads(cfg: dict, trace: ExpertLoadTrace, balanced: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per measured step, ([L, N, E] replayed routes, [L, N, E] routes the planner saw: the previous `window` steps)
    of a bench_train configuration, built by the benchmark's own TraceReplay."""
    from training.data import TraceReplay
    from training.moe.gating import scale_counts

    m, bt, data = cfg["model"], cfg["bench_train"], cfg["data"]
    world, k = cfg["train"]["ranks"], m["top_k"]
    if cfg["trainer"]["micro_batches"] != 1:
        raise ValueError("sim_validate: bench_train configurations with trainer.micro_batches != 1 are not simulated")
    steps = bt["warmup_steps"] + bt["measure_steps"]
    replay = TraceReplay(trace, m["num_layers"], m["num_experts"], k, world, bt["trace_offset"] + steps)
    tokens = data["global_batch"] // world * data["seq_len"]

    def at(position: int) -> np.ndarray:
        if balanced:
            row = np.ones(m["num_experts"], dtype=np.int64)
            return np.stack([np.stack([scale_counts(row, tokens * k, tokens)] * world)] * m["num_layers"])
        return np.stack([np.stack([r.numpy() for r in replay(position, rank, tokens)], 0)
                         for rank in range(world)], 1)  # [L, N, E]

    window = max(1, cfg["planner"]["window"])
    loads, plans = [], []
    for s in range(bt["warmup_steps"], steps):
        g = bt["trace_offset"] + s
        loads.append(at(g))
        plans.append(sum(at(max(0, g - w)) for w in range(1, window + 1)))
    return loads, plans


def simulate_bench_train(cfg: dict, trace: ExpertLoadTrace, profile: Path) -> dict[tuple[str, str], float]:
    """(system, routing) -> simulated seconds per step, mean over the measured steps."""
    model = model_config(cfg["model"])
    cluster = local_cpu(profile)
    compute = profile_compute(profile, threads=cfg["train"]["threads_per_rank"])
    world = cfg["train"]["ranks"]
    cluster = cluster.with_shape(1, world)
    fp32 = Bytes(4, 4, 4) if cfg["trainer"]["precision"] == "fp32" else Bytes()
    out = {}
    for routing in ("trace", "balanced"):
        loads, plans = bench_train_loads(cfg, trace, routing == "balanced")
        for name in cfg["bench_train"]["systems"]:
            if name not in CPU_SYSTEMS:
                continue
            system = cfg["planner"]["name"] if name == "fsep" else CPU_SYSTEMS[name]
            times = [simulate_iteration(model, cluster, system, x, cfg["train"]["slots_per_device"], compute,
                                        seq_len=cfg["data"]["seq_len"], plan_loads=p, nbytes=fp32).iteration_s
                     for x, p in zip(loads, plans)]
            out[(name, routing)] = float(np.mean(times))
    return out


def simulate_bench_fsep(cfg: dict, trace: ExpertLoadTrace, profile: Path) -> dict[str, float]:
    """method -> simulated seconds of one MoE layer's forward + backward (no attention: the benchmark times the MoE
    layer alone), mean over its samples."""
    from experiments.bench_fsep import BenchConfig, load_samples, plan_loads
    from training.model import ModelConfig

    fields = {k: v for k, v in cfg.items() if k in BenchConfig.__dataclass_fields__}
    bc = BenchConfig(**{"trace": cfg.get("expert_trace", ""), "seed": 0, **fields})
    merged = trace.merge_ranks(bc.ranks)
    picks, targets = load_samples(bc, merged)  # [S, N, E]
    history = plan_loads(bc, merged, picks)
    model = ModelConfig(vocab_size=16, hidden=bc.hidden, ffn=bc.ffn, num_layers=1, num_heads=1, num_kv_heads=1,
                        num_experts=bc.experts, top_k=bc.top_k, max_seq_len=1)
    cluster = local_cpu(profile).with_shape(1, bc.ranks)
    compute = profile_compute(profile, threads=1)  # the benchmark runs one thread per rank
    fp32 = Bytes(4, 4, 4)
    uniform = np.full((1, bc.ranks, bc.experts), bc.tokens * bc.top_k // bc.experts, dtype=np.int64)
    out = {}
    for method in ("ep", "fsdp_ep", "fsep", "balanced"):
        times = []
        for s in range(len(picks)):
            x = uniform if method == "balanced" else targets[s][None]
            p = uniform if method == "balanced" else history[s][None]
            c = bc.experts // bc.ranks if method in ("ep", "fsdp_ep") else bc.slots  # as the benchmark builds them
            system = bc.planner if method == "fsep" else CPU_SYSTEMS[method]
            layer = simulate_iteration(model, cluster, system, x, c, compute, seq_len=1, plan_loads=p,
                                       nbytes=fp32).layers[0]
            times.append(layer.total - layer.attention)
        out[method] = float(np.mean(times))
    return out


def measured_bench_train(results: dict) -> dict[tuple[str, str], tuple[float, float]]:
    """(system, routing) -> (step CPU s, step wall s), the benchmark's medians over repeats."""
    return {(r["system"], r["routing"]): (r["step_cpu_s"], r["step_wall_s"]) for r in results["rows"]}


def measured_bench_fsep(results: dict) -> dict[str, tuple[float, float]]:
    """method -> (CPU s, wall s) of one MoE layer's forward + backward, mean over samples."""
    out = {}
    for method in CPU_SYSTEMS:
        cpu = [r[f"{method}_cpu_s"] for r in results["samples"] if f"{method}_cpu_s" in r]
        wall = [r[f"{method}_s"] for r in results["samples"] if f"{method}_s" in r]
        if cpu and wall:
            out[method] = (float(np.mean(cpu)), float(np.mean(wall)))
    return out


# Ratios the simulator is checked on: (bench, numerator, denominator), keys as measured_* return them.
RATIOS = (("bench_train", ("fsep", "trace"), ("ep", "trace")),
          ("bench_train", ("fsdp_ep", "trace"), ("ep", "trace")),
          ("bench_train", ("fsep", "trace"), ("fsep", "balanced")),
          ("bench_train", ("ep", "trace"), ("ep", "balanced")),
          ("bench_fsep", "fsep", "ep"),
          ("bench_fsep", "fsdp_ep", "ep"),
          ("bench_fsep", "fsep", "balanced"))


def cpu_rows(measured: dict, trace: ExpertLoadTrace, profile: Path) -> list[dict]:
    """Per configuration measured vs simulated seconds (CPU clock, wall beside it), then the RATIOS."""
    sim, meas = {}, {}
    if "bench_train" in measured:
        sim["bench_train"] = simulate_bench_train(measured["bench_train"]["config"], trace, profile)
        meas["bench_train"] = measured_bench_train(measured["bench_train"]["results"])
    if "bench_fsep" in measured:
        sim["bench_fsep"] = simulate_bench_fsep(measured["bench_fsep"]["config"]["bench_fsep"]
                                                if "bench_fsep" in measured["bench_fsep"]["config"]
                                                else measured["bench_fsep"]["config"], trace, profile)
        meas["bench_fsep"] = measured_bench_fsep(measured["bench_fsep"]["results"])
    rows = []
    for bench in sim:
        for key, s in sim[bench].items():
            if key in meas[bench]:
                cpu, wall = meas[bench][key]
                rows.append({"bench": bench, "config": _label(key),
                             "metric": "step_s", "simulated": s, "measured_cpu": cpu, "measured_wall": wall,
                             "error_cpu": rel_error(s, cpu), "error_wall": rel_error(s, wall)})
    for bench, a, b in RATIOS:
        if bench in sim and {a, b} <= set(sim[bench]) and {a, b} <= set(meas[bench]):
            s = sim[bench][a] / sim[bench][b]
            cpu = meas[bench][a][0] / meas[bench][b][0]
            wall = meas[bench][a][1] / meas[bench][b][1]
            rows.append({"bench": bench, "config": f"{_label(a)} : {_label(b)}", "metric": "ratio", "simulated": s,
                         "measured_cpu": cpu, "measured_wall": wall, "error_cpu": rel_error(s, cpu),
                         "error_wall": rel_error(s, wall)})
    return rows


def _label(key: str | tuple[str, str]) -> str:
    return key if isinstance(key, str) else "/".join(key)


# ---- the task --------------------------------------------------------------------------------------------------


def run(cfg, out_dir: str | Path) -> dict:
    sv = cfg.sim_validate
    out_dir = Path(out_dir)
    names = [sv.expert_trace]
    if sv.paper:
        names += [f"{laer_paper.RESULTS_DIR}/breakdown_analysis_backup.csv",
                  f"{laer_paper.RESULTS_DIR}/e2e_analysis_backup.csv"]
    files = ensure_files(locate_data_dir(cfg.paths.data_dir, os.environ), names, cfg.paths.fallback,
                         synthetic_dir=out_dir / "synthetic_data", seed=cfg.seed)
    trace = load_expert_trace(files.path(sv.expert_trace))
    paper_rows: list[dict] = []
    calibration = PAPER
    if sv.paper:
        breakdown = laer_paper.read_breakdown(files.path(names[1]))
        e2e = laer_paper.read_e2e(files.path(names[2]))
        samples = laer_paper.trace_samples(trace, sv.samples)
        if sv.refit:
            calibration = fit(trace, samples, breakdown, PAPER)
        log.info("calibration: GEMM efficiency %.4f, memory-bound %.3f MB per token per layer (%s)",
                 calibration.gemm_efficiency, calibration.non_expert.elementwise_bytes / 1e6,
                 "refitted" if sv.refit else "committed, training.sim.calibration")
        paper_rows = (breakdown_rows(trace, samples, breakdown, FIT_MODEL, calibration, "fit")
                      + breakdown_rows(trace, samples, breakdown, HELD_OUT_MODEL, calibration, "held out")
                      + e2e_rows(trace, samples, e2e, calibration))
        write_csv(out_dir / "sim_validate_paper.csv", paper_rows)
    measured = load_measured(REPO / sv.measured if not Path(sv.measured).is_absolute() else Path(sv.measured))
    for key in ("bench_train", "bench_fsep"):
        fresh = getattr(sv, f"{key}_results")
        if fresh:
            measured[key] = json.loads(Path(fresh).read_text())
    profile = Path(cfg.paths.profile) if cfg.paths.profile else REPO / "common" / "profiles" / "local_cpu.json"
    rows = cpu_rows(measured, trace, profile)
    write_csv(out_dir / "sim_validate_cpu.csv", rows)
    summary = summarise(paper_rows) if paper_rows else []
    _log(paper_rows, summary, rows)
    _plot(out_dir / "sim_validate.png", paper_rows, rows)
    return {"calibration": {"gemm_efficiency": calibration.gemm_efficiency,
                            "elementwise_bytes": calibration.non_expert.elementwise_bytes,
                            "attention_efficiency": calibration.non_expert.attention_efficiency,
                            "node_inter_bw": calibration.node_inter_bw, "refit": bool(sv.refit)},
            "paper_summary": summary, "cpu": rows, "measured_state": measured.get("machine_state", ""),
            "data": files.summary(), "headline": _headline(paper_rows, rows)}


def _headline(paper_rows: list[dict], cpu: list[dict]) -> list[dict]:
    out = []
    for r in paper_rows:
        if r["metric"] == "speedup" and r["dataset"] == "C4" and r["aux_loss"] == 0.0 and r["model"] == FIT_MODEL:
            out.append(headline_row("sim vs paper", f"{r['model']} C4 aux 0 {r['system']}", "speedup", r["ours"],
                                    r["paper"]))
    for r in cpu:
        if r["metric"] == "ratio":
            out.append(headline_row("sim vs CPU bench", f"{r['bench']} {r['config']}", "step-time ratio (CPU clock)",
                                    r["simulated"], r["measured_cpu"]))
    return out


def _log(paper_rows, summary, cpu) -> None:
    for r in paper_rows:
        if r["part"].startswith("breakdown"):
            log.info("%-20s %-18s %-8s %-11s ours %7.2f paper %7.2f error %+6.1f%%", r["part"], r["model"], r["system"],
                     r["metric"], r["ours"], r["paper"], 100 * r["error"])
    for s in summary:
        log.info("%-20s %-11s %-22s n=%2d mean |err| %5.1f%% max %5.1f%% within 10%%: %3.0f%%", s["part"], s["metric"],
                 s["system"], s["n"], 100 * s["mean_abs_error"], 100 * s["max_abs_error"], 100 * s["within_10pct"])
    for r in cpu:
        log.info("%-11s %-28s %-6s simulated %8.4f measured cpu %8.4f (%+6.1f%%) wall %8.4f (%+6.1f%%)", r["bench"],
                 r["config"], r["metric"], r["simulated"], r["measured_cpu"], 100 * r["error_cpu"], r["measured_wall"],
                 100 * r["error_wall"])


def _plot(path: Path, paper_rows: list[dict], cpu: list[dict]) -> None:
    fig, axes = plotting.figure(1, 3, "training simulator against real runs")
    for i, (metric, ax) in enumerate((("iteration_s", axes[0][0]), ("speedup", axes[0][1]))):
        pts = [r for r in paper_rows if r["metric"] == metric]
        for j, system in enumerate(dict.fromkeys(r["system"] for r in pts)):
            mine = [r for r in pts if r["system"] == system]
            plotting.line(ax, [r["paper"] for r in mine], [r["ours"] for r in mine], system, j, linestyle="none")
        if pts:
            lo = min(min(r["paper"], r["ours"]) for r in pts)
            hi = max(max(r["paper"], r["ours"]) for r in pts)
            ax.plot([lo, hi], [lo, hi], color="gray", linewidth=0.8)
            ax.fill_between([lo, hi], [0.9 * lo, 0.9 * hi], [1.1 * lo, 1.1 * hi], color="gray", alpha=0.15)
        ax.set_xlabel(f"paper {metric}")
        ax.set_ylabel(f"simulated {metric}")
        ax.set_title(f"e2e {metric} (band: +-10%)")
        if pts:
            plotting.legend(ax, outside=i == 1)
    ax = axes[0][2]
    ratios = [r for r in cpu if r["metric"] == "ratio"]
    x = np.arange(len(ratios))
    ax.bar(x - 0.2, [r["simulated"] for r in ratios], 0.4, label="simulated")
    ax.bar(x + 0.2, [r["measured_cpu"] for r in ratios], 0.4, label="measured (CPU clock)")
    ax.set_xticks(x, [f"{r['bench'][6:]}\n{r['config']}" for r in ratios], rotation=60, fontsize=6)
    ax.set_ylabel("step-time ratio")
    ax.set_title("2-rank CPU benchmarks")
    if ratios:
        plotting.legend(ax)
    plotting.save(fig, path)
