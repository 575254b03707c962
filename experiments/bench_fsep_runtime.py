"""Benchmark (not a test): the FSEP runtime's expert-memory lifecycle and communication schedule, 2 gloo ranks.

    python -m experiments.run experiment=laer/bench_fsep_runtime [bench_fsep_runtime.layers=[1,2,4,8] ...]

(a) Memory per device against the number of FSEP layers L (a MoEDecoder of L blocks, one forward+backward), with
    the restored experts freed after each layer's forward (free, FSDP-style) or kept to the backward (keep):
      restored_peak   the most bytes of restored experts (buffers + restores in flight) alive at once over the step
                      (the schedule's counter); the claim: flat in L in free mode (at most the current layer and the
                      prefetched one), L layers' worth in keep mode
      activations     bytes of the tensors autograd saved, counted at the end of the forward (saved-tensor hooks,
                      each storage once) without the restored buffers: the same in both modes
      persistent      parameters + their gradients (the [E, S] shards: E*P/N per layer)
      peak_bound      persistent + activations + restored_peak: an upper bound on the step's peak (activations are
                      largest at the end of the forward, restored memory may peak later in the backward)
    On a GPU (`experiments/device/fsep_cuda_step.py`) torch.cuda.max_memory_allocated measures the real peak.
(b) Step time (forward+backward of an L-layer decoder) with the communication schedule on (comm_opt: restore of
    layer i+1 before layer i's compute, deferred gradient all-to-all, separate restore group) and off (every
    transfer synchronous: stronger than the artifact's no_comm_opt, which only lowers FSDP's prefetch to one unit;
    training.sim.Prefetch), in free and keep modes, the four timed in turn one step per round (so a shared machine's drift
    falls on all alike); median over rounds of the max over ranks of wall clock, process CPU time (every thread of
    the rank: compute and gloo's copies) and main-thread CPU time. The no_comm_opt cost is put
    beside the paper's Fig. 12 ablation (ablation_analysis_backup.csv: LAER against no_comm_opt, 8.6%).
    On gloo over CPU, gloo's async collectives run on its own threads and compete for the same 2 cores as the
    compute, so overlap can only hide waiting, not work: the gain here says little about NCCL on GPUs.
Writes bench_fsep_runtime.csv (one row per measurement), bench_fsep_runtime.png (and results.json via
experiments.run).
"""

from __future__ import annotations

import csv
import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MIB = 2 ** 20
PAPER_LAER, PAPER_NO_COMM_OPT = "LAER", "no_comm_opt"


@dataclass(frozen=True)
class RuntimeBenchConfig:
    ranks: int  # N gloo processes
    hidden: int  # H
    ffn: int  # F
    experts: int  # E
    top_k: int  # k
    slots: int  # C slots per device
    batch: int  # B sequences per rank
    seq_len: int  # S positions
    layers: tuple[int, ...]  # L values of the memory sweep
    time_layers: int  # L of the step-time model
    reps: int  # timed steps per mode (median)
    warmup: int  # untimed steps per mode
    seed: int


def _model(cfg: RuntimeBenchConfig, num_layers: int):
    from training.model import ModelConfig, MoEDecoder

    mcfg = ModelConfig(vocab_size=256, hidden=cfg.hidden, ffn=cfg.ffn, num_layers=num_layers,
                       num_heads=max(1, cfg.hidden // 32), num_kv_heads=1, num_experts=cfg.experts, top_k=cfg.top_k,
                       max_seq_len=cfg.seq_len, aux_loss_coef=0.01)
    return MoEDecoder(mcfg, seed=cfg.seed)


def _loss(model, tokens):
    from training.model import lm_loss

    out = model(tokens)
    return lm_loss(out.logits, tokens) + out.aux_loss


def _forward_saving(model, tokens):
    """The loss, and the tensors autograd saved for its backward by storage (each storage once)."""
    import torch

    saved = {}

    def pack(t):
        saved[t.untyped_storage()._cdata] = t
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        return _loss(model, tokens), saved


def _memory_row(cfg: RuntimeBenchConfig, groups, tokens, num_layers: int, keep: bool) -> dict:
    """One forward+backward of an L-layer model; the byte counts of (a), max over ranks."""
    import torch
    import torch.distributed as dist

    from training.fsep import apply_fsep, distributed_layers

    model = apply_fsep(_model(cfg, num_layers), groups, cfg.slots, keep_restored=keep)
    sched = distributed_layers(model)[0].schedule
    for _ in range(2):  # the second step is measured: the first allocates the gradients
        model.zero_grad(set_to_none=False)
        sched.reset_peak()
        loss, saved = _forward_saving(model, tokens)
        restored_now = {r.full.untyped_storage()._cdata for f in sched._forwards.values() for r in f
                        if r.full is not None}
        activations = sum(t.untyped_storage().nbytes() for k, t in saved.items() if k not in restored_now)
        del saved
        loss.backward()
    persistent = sum(p.numel() * p.element_size() * (2 if p.grad is not None else 1) for p in model.parameters())
    vals = torch.tensor([sched.peak_bytes, activations, persistent], dtype=torch.float64)
    dist.all_reduce(vals, op=dist.ReduceOp.MAX)
    restored_peak, activations, persistent = (float(v) / MIB for v in vals)
    layer = distributed_layers(model)[0]
    per_layer = cfg.slots * layer.groups.size * layer.shard_width * layer.expert_shard.element_size() / MIB
    return {"part": "memory", "mode": "keep" if keep else "free", "layers": num_layers,
            "restored_peak_mib": restored_peak, "restored_peak_layers": restored_peak / per_layer,
            "activations_mib": activations, "persistent_mib": persistent,
            "peak_bound_mib": persistent + activations + restored_peak}


MODES = ((False, True), (False, False), (True, True), (True, False))  # (keep_restored, comm_opt) of (b)


def _time_rows(cfg: RuntimeBenchConfig, groups, tokens) -> list[dict]:
    """(b): every mode's model built and warmed up, then the modes timed in turn, one step each per round, so drift
    of a shared machine (other jobs, the allocator warming up) falls on every mode alike; per mode the median over
    rounds of the max over ranks."""
    import torch
    import torch.distributed as dist

    from training.fsep import apply_fsep

    models = [apply_fsep(_model(cfg, cfg.time_layers), groups, cfg.slots, comm_opt=comm_opt, keep_restored=keep)
              for keep, comm_opt in MODES]

    def step(model):
        model.zero_grad(set_to_none=True)
        _loss(model, tokens).backward()

    for model in models:
        for _ in range(cfg.warmup):
            step(model)
    times = [[] for _ in MODES]  # per mode: (wall, process CPU, main-thread CPU) seconds per round
    for _ in range(cfg.reps):
        for model, out in zip(models, times):
            dist.barrier()
            t0, c0, h0 = time.perf_counter(), time.process_time(), time.thread_time()
            step(model)
            dt = torch.tensor([time.perf_counter() - t0, time.process_time() - c0, time.thread_time() - h0],
                              dtype=torch.float64)
            dist.all_reduce(dt, op=dist.ReduceOp.MAX)
            out.append(dt.tolist())
    rows = []
    for (keep, comm_opt), out in zip(MODES, times):
        wall, cpu, thread = zip(*out)
        rows.append({"part": "time", "mode": "keep" if keep else "free", "comm_opt": comm_opt,
                     "layers": cfg.time_layers, "wall_ms": 1e3 * statistics.median(wall),
                     "cpu_ms": 1e3 * statistics.median(cpu), "thread_cpu_ms": 1e3 * statistics.median(thread)})
    return rows


def _rank_main(rank: int, world_size: int, cfg: RuntimeBenchConfig) -> list[dict]:
    import torch
    import torch.distributed as dist

    from training.fsep import FSEPGroups

    groups = FSEPGroups.create(dist.group.WORLD, devices_per_node=world_size)  # one machine: one node
    g = torch.Generator().manual_seed(cfg.seed)
    tokens = torch.randint(0, 256, (world_size, cfg.batch, cfg.seq_len), generator=g)[rank]
    rows = [_memory_row(cfg, groups, tokens, n_layers, keep) for keep in (False, True) for n_layers in cfg.layers]
    rows += _time_rows(cfg, groups, tokens)
    return rows


def read_paper_ablation(path: Path) -> dict[str, float]:
    """method -> avg_time_ms of the paper's Fig. 12 ablation CSV (columns method, avg_time_ms)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"method", "avg_time_ms"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected columns method, avg_time_ms, got {reader.fieldnames}")
        return {row["method"]: float(row["avg_time_ms"]) for row in reader}


def ablation_table(rows: list[dict], paper: dict[str, float] | None) -> list[dict]:
    """Per mode: our step time with comm_opt and without (wall and CPU) and no_comm_opt's cost, beside the paper's."""
    paper_cost = None
    if paper is not None and {PAPER_LAER, PAPER_NO_COMM_OPT} <= set(paper):
        paper_cost = 100.0 * (paper[PAPER_NO_COMM_OPT] / paper[PAPER_LAER] - 1.0)
    out = []
    for mode in ("free", "keep"):
        on = next(r for r in rows if r["part"] == "time" and r["mode"] == mode and r["comm_opt"])
        off = next(r for r in rows if r["part"] == "time" and r["mode"] == mode and not r["comm_opt"])
        out.append({"mode": mode, "comm_opt_wall_ms": on["wall_ms"], "no_comm_opt_wall_ms": off["wall_ms"],
                    "no_comm_opt_cost_wall_pct": 100.0 * (off["wall_ms"] / on["wall_ms"] - 1.0),
                    "comm_opt_cpu_ms": on["cpu_ms"], "no_comm_opt_cpu_ms": off["cpu_ms"],
                    "no_comm_opt_cost_cpu_pct": 100.0 * (off["cpu_ms"] / on["cpu_ms"] - 1.0),
                    "paper_no_comm_opt_cost_pct": paper_cost})
    return out


def format_tables(rows: list[dict], ablation: list[dict]) -> str:
    lines = ["(a) memory per device (MiB, max over ranks)",
             f"{'mode':>5} {'L':>3} {'restored_peak':>14} {'(layers)':>9} {'activations':>12} {'persistent':>11} "
             f"{'peak_bound':>11}"]
    for r in rows:
        if r["part"] == "memory":
            lines.append(f"{r['mode']:>5} {r['layers']:>3} {r['restored_peak_mib']:>14.3f} "
                         f"{r['restored_peak_layers']:>9.2f} {r['activations_mib']:>12.3f} "
                         f"{r['persistent_mib']:>11.3f} {r['peak_bound_mib']:>11.3f}")
    lines += ["(b) step time (ms, median of max over ranks)",
              f"{'mode':>5} {'comm_opt':>8} {'wall':>9} {'cpu':>9} {'thread_cpu':>11}"]
    for r in rows:
        if r["part"] == "time":
            lines.append(f"{r['mode']:>5} {r['comm_opt']!s:>8} {r['wall_ms']:>9.1f} {r['cpu_ms']:>9.1f} "
                         f"{r['thread_cpu_ms']:>11.1f}")
    lines.append("ablation: cost of no_comm_opt (% over comm_opt), ours (wall / CPU) vs the paper's Fig. 12")
    for a in ablation:
        paper = "n/a" if a["paper_no_comm_opt_cost_pct"] is None else f"{a['paper_no_comm_opt_cost_pct']:.1f}"
        lines.append(f"{a['mode']:>5} wall {a['no_comm_opt_cost_wall_pct']:+.1f}%  cpu "
                     f"{a['no_comm_opt_cost_cpu_pct']:+.1f}%  paper {paper}%")
    return "\n".join(lines)


def plot(rows: list[dict], ablation: list[dict], cfg: RuntimeBenchConfig, path: Path) -> None:
    from experiments import plotting

    fig, axes = plotting.figure(1, 2, "FSEP runtime: restored-expert memory and the communication schedule",
                                {"ranks": cfg.ranks, "H": cfg.hidden, "F": cfg.ffn, "E": cfg.experts,
                                 "C": cfg.slots, "tokens/rank": cfg.batch * cfg.seq_len})
    ax = axes[0, 0]
    for i, mode in enumerate(("free", "keep")):
        mem = [r for r in rows if r["part"] == "memory" and r["mode"] == mode]
        plotting.line(ax, [r["layers"] for r in mem], [r["restored_peak_mib"] for r in mem],
                      f"{mode}: restored experts", index=i)
        plotting.line(ax, [r["layers"] for r in mem], [r["peak_bound_mib"] for r in mem],
                      f"{mode}: peak bound (+ activations, params)", index=i + 2)
    ax.set_xlabel("FSEP layers L")
    ax.set_ylabel("MiB per device")
    plotting.legend(ax)
    ax = axes[0, 1]
    labels, ours_wall, ours_cpu = [], [], []
    for a in ablation:
        labels.append(a["mode"])
        ours_wall.append(a["no_comm_opt_cost_wall_pct"])
        ours_cpu.append(a["no_comm_opt_cost_cpu_pct"])
    xs = list(range(len(labels)))
    ax.bar([x - 0.2 for x in xs], ours_wall, width=0.4, label="ours, wall")
    ax.bar([x + 0.2 for x in xs], ours_cpu, width=0.4, label="ours, process CPU")
    paper = ablation[0]["paper_no_comm_opt_cost_pct"]
    if paper is not None:
        plotting.hline(ax, paper, f"paper Fig. 12 ({paper:.1f}%)")
    ax.set_xticks(xs, labels)
    ax.set_ylabel("no_comm_opt step time over comm_opt (%)")
    plotting.legend(ax)
    plotting.save(fig, path)


def run(cfg, out_dir: Path) -> dict:
    """Hydra task `bench_fsep_runtime`: measure on cfg.bench_fsep_runtime.ranks gloo processes, write
    bench_fsep_runtime.csv and .png into out_dir; the returned dict is what experiments.run stores."""
    from common.datapaths import ensure_files, locate_data_dir
    from common.launch import run_local

    sc = cfg.bench_fsep_runtime
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bc = RuntimeBenchConfig(int(sc.ranks), int(sc.hidden), int(sc.ffn), int(sc.experts), int(sc.top_k),
                            int(sc.slots), int(sc.batch), int(sc.seq_len), tuple(int(x) for x in sc.layers),
                            int(sc.time_layers), int(sc.reps), int(sc.warmup), int(cfg.seed))
    if bc.ranks * bc.slots < bc.experts:
        raise ValueError(f"config key 'bench_fsep_runtime.slots'={bc.slots}: {bc.ranks} ranks x {bc.slots} slots "
                         f"cannot hold {bc.experts} experts")
    paper, paper_source = None, "missing"
    try:
        files = ensure_files(locate_data_dir(cfg.paths.data_dir, os.environ), [sc.paper_results],
                             cfg.paths.fallback, synthetic_dir=out_dir / "synthetic_data")
        paper, paper_source = read_paper_ablation(files.path(sc.paper_results)), files.sources[sc.paper_results].value
    except FileNotFoundError as err:  # the paper's numbers have no synthetic stand-in: report ours alone
        log.warning("bench_fsep_runtime: no paper ablation to compare with (%s)", err)
    log.info("bench_fsep_runtime: memory over L = %s, step time at L = %d, on %d gloo ranks", bc.layers,
             bc.time_layers, bc.ranks)
    rows = run_local(_rank_main, bc.ranks, "gloo", args=(bc,), num_threads=1)[0]
    ablation = ablation_table(rows, paper)
    columns = sorted({k for r in rows for k in r})
    with open(out_dir / "bench_fsep_runtime.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    plot(rows, ablation, bc, out_dir / "bench_fsep_runtime.png")
    log.info("%s", format_tables(rows, ablation))
    return {"config": asdict(bc), "rows": rows, "ablation": ablation, "paper": paper, "paper_source": paper_source,
            "note": "gloo on a shared 2-core CPU machine, one thread per rank; wall and CPU time both reported"}
