"""Hydra task `bench_train`: training throughput of whole-model systems on trace-replay skew, 2 gloo ranks.

    python -m experiments.run experiment=laer/bench_train [bench_train.measure_steps=8 data.global_batch=16 ...]

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
COLUMNS = ["system", "routing", "steps", "tokens_per_step", "wall_tokens_per_s", "cpu_tokens_per_s",
           "wall_tokens_per_s_skewed", "cpu_tokens_per_s_skewed", "drop_rate", "last_loss"]


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


def measure(cfg, out_dir: Path, system: System, routing: str, tokens) -> dict:
    """One (system, routing): train warmup + measure steps on `train.ranks` spawned ranks, time the measured ones."""
    from common.launch import run_local
    from experiments.train import _rank_main, spec_of
    from training.trainer import backend_for, device_for

    bc = cfg.bench_train
    steps, m = bc.warmup_steps + bc.measure_steps, cfg.trainer.micro_batches
    # spec_of keeps trainer.steps * M trace positions: ask for the offset's worth more, then train only `steps`.
    run_cfg = OmegaConf.merge(cfg, {"parallel": system.parallel, "trainer": {"steps": steps + -(-bc.trace_offset // m)}})
    spec = spec_of(run_cfg, out_dir)
    spec.trainer.steps = steps
    spec.replay.counts = spec.replay.counts[bc.trace_offset:][:steps * m]
    spec.tokens = tokens
    spec.extra = {"deepspeed": dict(system.deepspeed)}
    spec.checkpoint_every = 0
    spec.log_every = 10 ** 9  # the bench logs its own line per run
    trace_counts = spec.replay.counts.copy()
    if routing == "balanced":
        spec.replay.counts = np.ones_like(spec.replay.counts)  # TraceReplay scales each row to B*S*k routes
    world = cfg.train.ranks
    env = {"TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))}
    per_rank = run_local(_rank_main, world, backend_for(device_for(0)), args=(spec,), env=env,
                         num_threads=cfg.train.threads_per_rank)
    measured = range(bc.warmup_steps, bc.warmup_steps + bc.measure_steps)
    wall = [max(rows[s]["step_s"] for rows in per_rank) for s in measured]
    cpu = [max(rows[s]["step_cpu_s"] for rows in per_rank) for s in measured]
    tokens_per_step = spec.data.global_batch * spec.data.seq_len * m
    tokens_per_rank = spec.data.global_batch // world * spec.data.seq_len
    # The skewed half: measured steps ranked by EP-layout imbalance of the replayed (trace) counts.
    skew = [np.mean([ep_imbalance(trace_counts[(s * m + i) % len(trace_counts)]) for i in range(m)])
            for s in measured]
    top = sorted(np.argsort(skew)[::-1][:max(1, len(skew) // 2)].tolist())
    out = {"system": system.name, "routing": routing, "steps": len(wall), "tokens_per_step": tokens_per_step,
           "wall_tokens_per_s": _rate(tokens_per_step, wall), "cpu_tokens_per_s": _rate(tokens_per_step, cpu),
           "wall_tokens_per_s_skewed": _rate(tokens_per_step, [wall[i] for i in top]),
           "cpu_tokens_per_s_skewed": _rate(tokens_per_step, [cpu[i] for i in top]),
           "drop_rate": 0.0, "last_loss": per_rank[0][-1]["loss"], "skewed_steps": [measured[i] for i in top]}
    if system.deepspeed.get("drop_tokens"):
        out["drop_rate"] = drop_rate(spec.replay, measured, m, world, tokens_per_rank, spec.model["top_k"],
                                     system.deepspeed["capacity_factor"])
    log.info("%-8s %-8s tokens/s wall %8.0f cpu %8.0f (skewed half: wall %8.0f cpu %8.0f) drop %.3f",
             system.name, routing, out["wall_tokens_per_s"], out["cpu_tokens_per_s"],
             out["wall_tokens_per_s_skewed"], out["cpu_tokens_per_s_skewed"], out["drop_rate"])
    return out


def goals(rows: list[dict]) -> dict:
    """The targets, on both clocks: FSEP within 5% of its balanced-routing speed, >= 1.2x unpadded EP on the skewed
    half, dropping nothing."""
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
    from training.data import load_corpus

    out_dir = Path(out_dir)
    if not cfg.train.trace_replay:
        raise ValueError("train.trace_replay: bench_train replays the expert-load trace; it must be true")
    data = OmegaConf.to_object(cfg.data)
    _, tokens = load_corpus(data)
    log.info("bench_train: %d ranks, model %s, %d warm-up + %d measured steps, %d tokens per step",
             cfg.train.ranks, OmegaConf.to_container(cfg.model), cfg.bench_train.warmup_steps,
             cfg.bench_train.measure_steps, data.global_batch * data.seq_len * cfg.trainer.micro_batches)
    by_name = {s.name: s for s in SYSTEMS}
    unknown = [n for n in cfg.bench_train.systems if n not in by_name]
    if unknown:
        raise ValueError(f"bench_train.systems: unknown {unknown}; known: {list(by_name)}")
    systems = [by_name[n] for n in cfg.bench_train.systems]
    rows = [measure(cfg, out_dir, s, routing, tokens) for s in systems for routing in ROUTINGS]
    summary = goals(rows)
    log.info("goals: %s", summary)
    write_outputs(rows, out_dir)
    return {**summary, "rows": rows}


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
            vals = [next((r[f"{clock}_tokens_per_s"] for r in rows if r["system"] == n and r["routing"] == routing),
                     0.0) for n in names]
            ax.bar(x + (i - 0.5) * 0.4, vals, 0.4, label=routing)
        ax.set_xticks(x)
        ax.set_xticklabels(names)
        ax.set_ylabel(f"tokens/s ({'slowest rank CPU time' if clock == 'cpu' else 'wall time'})")
        plotting.legend(ax)
    plotting.save(fig, out_dir / "bench_train.png")
    log.info("wrote %s and %s", out_dir / "bench_train.csv", out_dir / "bench_train.png")
