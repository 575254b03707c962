"""Hydra task `bench_train`: training throughput of whole-model systems on trace-replay skew, 2 gloo ranks.

    python -m experiments.run experiment=laer/bench_train [bench_train.repeats=5 data.global_batch=48 ...]

Every system trains the same MoEDecoder (conf/model/tiny_mixtral scaled so expert compute dominates: F = 8 H, a
small attention) through the laer/train path itself (experiments.train._rank_main: the Trainer, its per-step rows),
with every MoE layer's routing forced to the SmartMoE trace's per-expert counts (trace replay), and again under
perfectly balanced routing (every expert the same count):
  fsep     FSEP, layout re-planned every step by the planner (planner=..., default laer_plus)
  ep       expert parallel without padding (whole experts, exactly the routed tokens)
  fsdp_ep  FSEP storage, the static FSDP+EP layout
  ds_ep    deepspeed.moe.layer.MoE, dropless (pads every expert to the largest count)
  ds_cap1  the same with capacity factor 1.0 (drops the routes beyond capacity; drop rate reported)
After `warmup_steps` discarded steps, `measure_steps` steps are timed. tokens/s is reported twice: from wall time
(the slowest rank's step) and from the slowest rank's CPU time of the step (process time: compute plus gloo's copies;
blocked waits cost none). On a machine shared with other jobs the CPU figure is the fair one: wall time follows the
total work of all ranks, so a rank idling at a barrier gives its core away and imbalance barely shows.
The "skewed half" is the half of the measured steps whose replayed loads are the most imbalanced under EP's layout.

Noise. Every (system, routing) runs `repeats` times, interleaved (repeat 1 of every system, then repeat 2, ...), so
a slow spell of the machine hits all systems alike rather than one; all runs share one spawned group of ranks (a
fresh model and Trainer per run), so start-up is paid once. The table reports the median over repeats and the
spread (min and max over repeats); the goal ratios are ratios of medians.
Writes bench_train.csv and bench_train.png (and, through experiments.run, results.json) to the run directory.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from training.train_config import Parallel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class System:
    name: str
    parallel: Parallel
    deepspeed: dict = field(default_factory=dict)  # apply_deepspeed_moe's drop_tokens / capacity_factor


SYSTEMS = (System("fsep", Parallel.fsep), System("ep", Parallel.ep), System("fsdp_ep", Parallel.fsdp_ep),
           System("ds_ep", Parallel.deepspeed_ep),
           System("ds_cap1", Parallel.deepspeed_ep, {"drop_tokens": True, "capacity_factor": 1.0}))
ROUTINGS = ("trace", "balanced")
COLUMNS = ["system", "routing", "repeats", "steps", "tokens_per_step", "step_cpu_s", "step_wall_s",
           "cpu_tokens_per_s", "cpu_tokens_per_s_min", "cpu_tokens_per_s_max",
           "wall_tokens_per_s", "wall_tokens_per_s_min", "wall_tokens_per_s_max",
           "cpu_tokens_per_s_skewed", "cpu_tokens_per_s_skewed_min", "cpu_tokens_per_s_skewed_max",
           "wall_tokens_per_s_skewed", "wall_tokens_per_s_skewed_min", "wall_tokens_per_s_skewed_max",
           "drop_rate", "last_loss"]


def ep_imbalance(counts: np.ndarray) -> float:
    """Mean over layers of max/mean device load when device d holds experts [d*E/N, (d+1)*E/N) (EP's layout).
    counts: [L, N, E] routes of one micro-batch."""
    per_expert = counts.sum(1)  # [L, E]
    n = counts.shape[1]
    dev = per_expert.reshape(per_expert.shape[0], n, -1).sum(-1)  # [L, N]
    return float((dev.max(1) / np.maximum(dev.mean(1), 1e-9)).mean())


def drop_rate(replay, steps: range, micro_batches: int, world: int, tokens_per_rank: int, top_k: int,
              capacity_factor: float) -> float:
    """Fraction of routes DeepSpeed's capacity mode drops on the replayed counts (per rank and layer, as its gate)."""
    from training.fsep.deepspeed_ep import capacity, dropped_routes

    dropped = total = 0
    for s in steps:
        for i in range(micro_batches):
            for rank in range(world):
                for row in replay(s * micro_batches + i, rank, tokens_per_rank):
                    counts = row.numpy()
                    cap = capacity(tokens_per_rank, len(counts), top_k, capacity_factor)
                    dropped += dropped_routes(counts, cap)
                    total += int(counts.sum())
    return dropped / max(total, 1)


def _rate(tokens: int, seconds: list[float]) -> float:
    return tokens * len(seconds) / max(sum(seconds), 1e-12)


def run_spec(cfg, out_dir: Path, system: System, routing: str, tokens):
    """The laer/train RunSpec of one (system, routing): warmup + measure steps on the offset trace (or balanced)."""
    from experiments.train import spec_of

    bc = cfg.bench_train
    steps, m = bc.warmup_steps + bc.measure_steps, cfg.trainer.micro_batches
    # spec_of keeps trainer.steps * M trace positions: ask for the offset's worth more, then train only `steps`.
    run_cfg = OmegaConf.merge(cfg, {"parallel": system.parallel, "trainer": {"steps": steps + -(-bc.trace_offset // m)}})
    spec = spec_of(run_cfg, out_dir)
    spec.trainer.steps = steps
    spec.replay.counts = spec.replay.counts[bc.trace_offset:][:steps * m]
    spec.tokens = tokens
    spec.extra = {"deepspeed": dict(system.deepspeed), "trace_counts": spec.replay.counts.copy()}
    spec.checkpoint_every = 0
    spec.log_every = 10 ** 9  # the bench logs its own line per run
    if routing == "balanced":
        spec.replay.counts = np.ones_like(spec.replay.counts)  # TraceReplay scales each row to B*S*k routes
    return spec


def _rank_runs(rank: int, world: int, specs: list) -> list[list[dict]]:
    """One rank of the spawned group: every run in order (the same order on every rank), each a fresh Trainer."""
    from experiments.train import _rank_main

    return [_rank_main(rank, world, spec) for spec in specs]


def run_row(cfg, system: System, routing: str, spec, per_rank: list[list[dict]], repeat: int) -> dict:
    """One run's row from every rank's per-step rows."""
    bc = cfg.bench_train
    m, world = cfg.trainer.micro_batches, cfg.train.ranks
    measured = range(bc.warmup_steps, bc.warmup_steps + bc.measure_steps)
    wall = [max(rows[s]["step_s"] for rows in per_rank) for s in measured]
    cpu = [max(rows[s]["step_cpu_s"] for rows in per_rank) for s in measured]
    tokens_per_step = spec.data.global_batch * spec.data.seq_len * m
    tokens_per_rank = spec.data.global_batch // world * spec.data.seq_len
    trace_counts = spec.extra["trace_counts"]
    # The skewed half: measured steps ranked by EP-layout imbalance of the replayed (trace) counts.
    skew = [np.mean([ep_imbalance(trace_counts[(s * m + i) % len(trace_counts)]) for i in range(m)])
            for s in measured]
    top = sorted(np.argsort(skew)[::-1][:max(1, len(skew) // 2)].tolist())
    out = {"system": system.name, "routing": routing, "repeat": repeat, "steps": len(wall),
           "tokens_per_step": tokens_per_step, "step_cpu_s": float(np.mean(cpu)), "step_wall_s": float(np.mean(wall)),
           "wall_tokens_per_s": _rate(tokens_per_step, wall), "cpu_tokens_per_s": _rate(tokens_per_step, cpu),
           "wall_tokens_per_s_skewed": _rate(tokens_per_step, [wall[i] for i in top]),
           "cpu_tokens_per_s_skewed": _rate(tokens_per_step, [cpu[i] for i in top]),
           "drop_rate": 0.0, "last_loss": per_rank[0][-1]["loss"], "skewed_steps": [measured[i] for i in top]}
    if system.deepspeed.get("drop_tokens"):
        out["drop_rate"] = drop_rate(spec.replay, measured, m, world, tokens_per_rank, spec.model["top_k"],
                                     system.deepspeed["capacity_factor"])
    return out


RATES = ("wall_tokens_per_s", "cpu_tokens_per_s", "wall_tokens_per_s_skewed", "cpu_tokens_per_s_skewed")


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (system, routing): the median over repeats of every rate, with its min and max (the spread)."""
    keys = list(dict.fromkeys((r["system"], r["routing"]) for r in runs))
    rows = []
    for system, routing in keys:
        mine = [r for r in runs if (r["system"], r["routing"]) == (system, routing)]
        row = {"system": system, "routing": routing, "repeats": len(mine), "steps": mine[0]["steps"],
               "tokens_per_step": mine[0]["tokens_per_step"], "drop_rate": float(np.median([r["drop_rate"] for r in mine])),
               "step_cpu_s": float(np.median([r["step_cpu_s"] for r in mine])),
               "step_wall_s": float(np.median([r["step_wall_s"] for r in mine])),
               "last_loss": mine[-1]["last_loss"], "skewed_steps": mine[0]["skewed_steps"]}
        for k in RATES:
            vals = [r[k] for r in mine]
            row[k], row[f"{k}_min"], row[f"{k}_max"] = float(np.median(vals)), float(min(vals)), float(max(vals))
        rows.append(row)
    return rows


def goals(rows: list[dict]) -> dict:
    """The targets, on both clocks, from the aggregated (median) rows: FSEP within 5% of its balanced-routing speed,
    >= 1.2x unpadded EP on the skewed half, dropping nothing."""
    by = {(r["system"], r["routing"]): r for r in rows}
    out = {}
    fsep, bal, ep = by.get(("fsep", "trace")), by.get(("fsep", "balanced")), by.get(("ep", "trace"))
    for clock in ("wall", "cpu"):
        if fsep and bal:
            out[f"fsep_vs_balanced_{clock}"] = fsep[f"{clock}_tokens_per_s"] / bal[f"{clock}_tokens_per_s"]
        if fsep and ep:
            out[f"fsep_vs_ep_skewed_{clock}"] = (fsep[f"{clock}_tokens_per_s_skewed"]
                                                 / ep[f"{clock}_tokens_per_s_skewed"])
    if fsep:
        out["fsep_drop_rate"] = fsep["drop_rate"]
    if ("ds_cap1", "trace") in by:
        out["ds_cap1_drop_rate"] = by[("ds_cap1", "trace")]["drop_rate"]
    cpu_ok = [out.get("fsep_vs_balanced_cpu", 0) >= 0.95, out.get("fsep_vs_ep_skewed_cpu", 0) >= 1.2,
              out.get("fsep_drop_rate", 1) == 0]
    out["goals_met_cpu"] = all(cpu_ok)
    return out


def run(cfg, out_dir: Path) -> dict:
    """Hydra task `bench_train`: the table rows and the goal ratios (experiments.run writes results.json)."""
    from common.launch import run_local
    from training.data import load_corpus
    from training.trainer import backend_for, device_for

    out_dir = Path(out_dir)
    if not cfg.train.trace_replay:
        raise ValueError("train.trace_replay: bench_train replays the expert-load trace; it must be true")
    data = OmegaConf.to_object(cfg.data)
    _, tokens = load_corpus(data)
    log.info("bench_train: %d ranks, model %s, %d repeats of %d warm-up + %d measured steps, %d tokens per step",
             cfg.train.ranks, OmegaConf.to_container(cfg.model), cfg.bench_train.repeats, cfg.bench_train.warmup_steps,
             cfg.bench_train.measure_steps, data.global_batch * data.seq_len * cfg.trainer.micro_batches)
    by_name = {s.name: s for s in SYSTEMS}
    unknown = [n for n in cfg.bench_train.systems if n not in by_name]
    if unknown:
        raise ValueError(f"bench_train.systems: unknown {unknown}; known: {list(by_name)}")
    systems = [by_name[n] for n in cfg.bench_train.systems]
    if cfg.bench_train.repeats < 1:
        raise ValueError(f"bench_train.repeats must be >= 1, got {cfg.bench_train.repeats}")
    # Interleaved: repeat r of every (system, routing) before repeat r + 1 of any (module doc).
    order = [(rep, s, routing) for rep in range(cfg.bench_train.repeats) for s in systems for routing in ROUTINGS]
    specs = [run_spec(cfg, out_dir, s, routing, tokens) for _, s, routing in order]
    env = {"TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))}
    per_rank = run_local(_rank_runs, cfg.train.ranks, backend_for(device_for(0)), args=(specs,), env=env,
                         num_threads=cfg.train.threads_per_rank)
    runs = []
    for i, (rep, s, routing) in enumerate(order):
        runs.append(run_row(cfg, s, routing, specs[i], [ranks[i] for ranks in per_rank], rep))
        r = runs[-1]
        log.info("repeat %d %-8s %-8s tokens/s cpu %8.0f wall %8.0f (skewed half: cpu %8.0f wall %8.0f) step cpu "
                 "%.3fs drop %.3f", rep, s.name, routing, r["cpu_tokens_per_s"], r["wall_tokens_per_s"],
                 r["cpu_tokens_per_s_skewed"], r["wall_tokens_per_s_skewed"], r["step_cpu_s"], r["drop_rate"])
    rows = aggregate(runs)
    for r in rows:
        log.info("median %-8s %-8s tokens/s cpu %8.0f [%8.0f, %8.0f] wall %8.0f [%8.0f, %8.0f] skewed cpu %8.0f "
                 "drop %.3f", r["system"], r["routing"], r["cpu_tokens_per_s"], r["cpu_tokens_per_s_min"],
                 r["cpu_tokens_per_s_max"], r["wall_tokens_per_s"], r["wall_tokens_per_s_min"],
                 r["wall_tokens_per_s_max"], r["cpu_tokens_per_s_skewed"], r["drop_rate"])
    summary = goals(rows)
    log.info("goals: %s", summary)
    write_outputs(rows, out_dir)
    return {**summary, "rows": rows, "runs": runs}


def write_outputs(rows: list[dict], out_dir: Path) -> None:
    from experiments import plotting

    with open(out_dir / "bench_train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    names = list(dict.fromkeys(r["system"] for r in rows))
    fig, axes = plotting.figure(1, 2, "Training throughput (2 gloo ranks, trace-replay skew)")
    for j, clock in enumerate(("cpu", "wall")):
        ax = axes[0, j]
        x = np.arange(len(names))
        for i, routing in enumerate(ROUTINGS):
            mine = [next((r for r in rows if r["system"] == n and r["routing"] == routing), None) for n in names]
            k = f"{clock}_tokens_per_s"
            vals = [r[k] if r else 0.0 for r in mine]
            spread = [[r[k] - r[f"{k}_min"] if r else 0.0 for r in mine], [r[f"{k}_max"] - r[k] if r else 0.0
                                                                          for r in mine]]
            ax.bar(x + (i - 0.5) * 0.4, vals, 0.4, yerr=spread, capsize=3, label=routing)
        ax.set_xticks(x)
        ax.set_xticklabels(names)
        ax.set_ylabel(f"tokens/s, median (bars: min-max) ({'slowest rank CPU time' if clock == 'cpu' else 'wall'})")
        plotting.legend(ax)
    plotting.save(fig, out_dir / "bench_train.png")
    log.info("wrote %s and %s", out_dir / "bench_train.csv", out_dir / "bench_train.png")
