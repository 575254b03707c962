"""Benchmark (not a test): FSEP against expert-parallel baselines on real routing skew, 2 gloo ranks.

    python -m experiments.run experiment=laer/bench_fsep [bench_fsep.tokens=16384 bench_fsep.samples=20 ...]

Default size: T = 16,384 tokens per rank (the paper has 32,768 per device per micro-batch, and 16,384 is what fits
the whole run in ~15 minutes on 2 cores), H = 128, F = 448 = 3.5 H (Mixtral's 14336/4096), so expert compute
dominates the step as it does in the paper. The restore moves C*P elements per step whatever T is, so its share of
the step falls as 1/T; non-expert work per route (router, token all-to-all, reorderings) is O(H) against O(H*F)
expert flops, so its share falls as 1/F.

Per (iteration, layer) sample of the SmartMoE trace (16 source ranks summed into N), every rank replays its row
scaled to T*k routes with the trace-replay gate, and the median forward+backward time of each method is measured:
  ds_ep      (a) deepspeed.moe.layer.MoE, dropless (pads every expert to the largest count)
  ds_cap1    (b) the same with capacity factor 1.0 (drops routes; dropped fraction reported)
  ep         (c) expert parallel without padding (whole experts, exactly the routed tokens)
  fsdp_ep    (d) FSEP storage, the paper's static FSDP+EP layout
  fsep       (e) FSEP with the layout (and routing) of a training.planner planner (default laer_plus), planned from
             the previous `window` micro-batches of that layer (the runtime's lagged setting: the plan for micro-batch
             t comes from t-window .. t-1). Default window 4 with micro-batch 0: the previous recorded iteration's
             4 micro-batches, 10 training iterations before the sample (the trace keeps every 10th), so staler than a
             runtime's one-step lag. window 0 plans from the sample's own loads (oracle)
  balanced   (f) FSEP with perfectly uniform routing (the balanced limit; layout: the laer planner on uniform loads)
  fsep_sync  (e) without overlapping the restore all-to-all with routing and dispatch (sync_reps repetitions)
plus where FSEP's time goes (restore all-to-all, token all-to-all, expert compute; each fwd+bwd, measured apart).
Every time is reported twice: wall clock (max over ranks), and max-over-ranks CPU time of the step (each rank's
process time: compute plus gloo's copies; blocked waits cost none). On a machine shared with other jobs, wall time
follows the total work of all ranks, so an idle rank's core is taken by others and EP imbalance barely shows; the CPU
figure is what a dedicated core per rank would see. Targets are evaluated on both.
Writes bench_fsep.csv and bench_fsep.png (and, through experiments.run, results.json) to the run directory.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common.traces import ExpertLoadTrace
from experiments import plotting
from training.placement import Placement

log = logging.getLogger(__name__)


# ---- workload --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    tokens: int  # T tokens per rank per micro-batch
    hidden: int  # H
    ffn: int  # F, expert FFN size
    experts: int  # E
    top_k: int  # k
    ranks: int  # N gloo processes
    slots: int  # C slots per device for FSEP
    samples: int  # (iteration, layer) samples spread over training
    reps: int  # timed repetitions per method and sample (median)
    ds_dropless_reps: int  # repetitions of the slow padded DeepSpeed mode
    warmup: int  # untimed repetitions per method before the first sample
    trace: str  # SmartMoE counts npz
    microbatch: int  # which of the trace's micro-batches
    overlap_restore: bool  # FSEP launches the restore all-to-all before routing and dispatch
    seed: int
    planner: str = "laer_plus"  # the training.planner registry name that lays (e) out
    window: int = 0  # plan (e) from the sum of the previous `window` micro-batches of the layer; 0: from the sample's own
    sync_reps: int = 0  # repetitions of fsep_sync (the no-overlap diagnostic); 0: cfg.reps
    max_block_rows: int | None = None  # rows per expert matmul in our layers (ep, fsdp_ep, fsep, balanced); None: whole


def load_trace(cfg: BenchConfig) -> ExpertLoadTrace:
    """The expert trace with its source ranks merged into cfg.ranks, checked against the bench's shape."""
    from common.traces import load_expert_trace

    trace = load_expert_trace(cfg.trace)
    if trace.num_experts != cfg.experts:
        raise ValueError(f"config key 'bench_fsep.experts'={cfg.experts} but the trace {cfg.trace} has "
                         f"{trace.num_experts} experts")
    if trace.num_ranks % cfg.ranks:
        raise ValueError(f"config key 'bench_fsep.ranks'={cfg.ranks}: the trace's {trace.num_ranks} source ranks do "
                         f"not merge evenly")
    if not 0 <= cfg.microbatch < trace.num_microbatches:
        raise ValueError(f"config key 'bench_fsep.microbatch'={cfg.microbatch}: the trace has "
                         f"{trace.num_microbatches} micro-batches")
    return trace.merge_ranks(cfg.ranks)


def load_samples(cfg: BenchConfig, trace: ExpertLoadTrace) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Pick samples and return their per-rank target counts [S, N, E] (each row sums to T*k, max T)."""
    from training.moe import scale_counts

    first = _first_iteration(cfg, trace.num_microbatches)
    if first >= trace.num_iterations:
        raise ValueError(f"config key 'bench_fsep.window'={cfg.window}: the trace's {trace.num_iterations} "
                         f"iterations leave no sample with a full window of earlier micro-batches")
    its = np.linspace(first, trace.num_iterations - 1, cfg.samples).round().astype(int)
    picks = [(int(it), int((s * 7) % trace.num_layers)) for s, it in enumerate(its)]
    out = np.zeros((len(picks), cfg.ranks, cfg.experts), dtype=np.int64)
    for s, (it, layer) in enumerate(picks):
        rows = trace.microbatch(layer, it * trace.num_microbatches + cfg.microbatch)  # [N, E]
        for r in range(cfg.ranks):
            out[s, r] = scale_counts(rows[r], cfg.tokens * cfg.top_k, cfg.tokens)
    return picks, out


def _first_iteration(cfg: BenchConfig, microbatches: int) -> int:
    """First iteration whose micro-batch cfg.microbatch has `window` micro-batches before it (iteration-major)."""
    return -(-max(cfg.window - cfg.microbatch, 0) // microbatches)


def plan_loads(cfg: BenchConfig, trace: ExpertLoadTrace, picks: list[tuple[int, int]]) -> np.ndarray:
    """[S, N, E] loads each sample's plan is made from: the sum of the previous `window` micro-batches of the layer
    (window 0: the sample's own micro-batch). Trace units (its own tokens per micro-batch); a planner's layout and
    routing proportions do not depend on the scale."""
    out = np.zeros((len(picks), cfg.ranks, cfg.experts), dtype=np.int64)
    for s, (it, layer) in enumerate(picks):
        t = it * trace.num_microbatches + cfg.microbatch
        out[s] = trace.microbatch(layer, t) if cfg.window == 0 else trace.window_sum(layer, t, cfg.window)
    return out


def plan_layout(planner, loads: np.ndarray) -> tuple[Placement, np.ndarray | None]:
    """(placement, routing fractions or None for the FSEP rule) for (e) from a training.planner planner."""
    plan = planner.plan(loads)
    return plan.layout, (None if plan.fsep_routed else plan.routing)


# ---- one rank ---------------------------------------------------------------------------------------------------


def _timed(fn, reps, group) -> tuple[float, float]:
    """Median (wall seconds, CPU seconds) of fn over reps; each is the max over ranks.

    Wall: a step is as slow as its slowest rank. CPU: the rank's own process time (compute, and the copies gloo's
    threads make; blocked waits cost none). On a machine time-shared with other jobs, wall time tracks the total work
    of all ranks rather than the slowest rank, so max-over-ranks CPU time is the step time a dedicated core per rank
    would see."""
    import torch
    import torch.distributed as dist

    wall, cpu = [], []
    for _ in range(reps):
        dist.barrier(group)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        dt = torch.tensor([time.perf_counter() - t0, time.process_time() - c0], dtype=torch.float64)
        dist.all_reduce(dt, op=dist.ReduceOp.MAX, group=group)
        wall.append(float(dt[0]))
        cpu.append(float(dt[1]))
    return statistics.median(wall), statistics.median(cpu)


def _rank_main(rank: int, world_size: int, cfg: BenchConfig, picks: list[tuple[int, int]], targets: np.ndarray,
               history: np.ndarray) -> list[dict] | None:
    """One rank of the bench (run by common.launch.run_local, one thread per rank): the rows on rank 0.
    targets [S, N, E] replayed counts, history [S, N, E] the loads each sample's plan is made from."""
    import torch
    import torch.distributed as dist

    from common.stats import static_ep_imbalance
    from training.fsep import FSEPGroups, apply_ep, apply_fsdp_ep, apply_fsep
    from training.fsep.deepspeed_ep import DeepSpeedEP, capacity, dropped_routes
    from training.fsep.layer import slot_weights
    from training.moe import ReferenceMoE
    from training.planner import make_planner

    world = dist.group.WORLD
    groups = FSEPGroups(world, devices_per_node=cfg.ranks)  # one machine: one node
    torch.manual_seed(cfg.seed)
    ref = ReferenceMoE(cfg.hidden, cfg.ffn, cfg.experts, cfg.top_k)
    x = torch.randn(cfg.ranks, cfg.tokens, cfg.hidden)[rank]
    g = torch.randn(cfg.tokens, cfg.hidden)
    n, e, k, t, mbr = cfg.ranks, cfg.experts, cfg.top_k, cfg.tokens, cfg.max_block_rows
    layers = {
        "ds_ep": DeepSpeedEP(ref, groups, drop_tokens=False),
        "ds_cap1": DeepSpeedEP(ref, groups, drop_tokens=True, capacity_factor=1.0),
        "ep": apply_ep(ref, groups, max_block_rows=mbr),
        "fsdp_ep": apply_fsdp_ep(ref, groups, e // n, max_block_rows=mbr),
        "fsep": apply_fsep(ref, groups, cfg.slots, overlap_restore=cfg.overlap_restore, max_block_rows=mbr),
        "balanced": apply_fsep(ref, groups, cfg.slots, overlap_restore=cfg.overlap_restore, max_block_rows=mbr),
        # (e) with the restore all-to-all not overlapped: what the forward overlap saves
        "fsep_sync": apply_fsep(ref, groups, cfg.slots, overlap_restore=False, max_block_rows=mbr),
    }
    uniform = torch.full((e,), t * k // e, dtype=torch.int64)
    uniform[: t * k - int(uniform.sum())] += 1
    # The balanced limit's layout: replicas proportional to (uniform) load, LPT-placed.
    balanced = make_planner("laer", n, cfg.slots, groups.devices_per_node).plan(np.tile(uniform.numpy(), (n, 1)))
    layers["balanced"].set_placement(balanced.layout)
    del ref

    def step(layer, tc):
        def run():
            layer.zero_grad(set_to_none=True)
            y, aux = layer(x, tc)
            ((y * g).sum() + 0.01 * aux).backward()
        return run

    def phases(layer, tc):
        """Restore, token all-to-all (dispatch + combine) and compute, each fwd+bwd on its own."""
        def restore():
            ws = layer.restore_weights(layer.start_restore())
            torch.autograd.backward(ws, [torch.ones_like(m) for m in ws])

        idx, w, _ = layer.router(x, tc)
        w = w.detach()

        def a2a():
            xs = x.detach().requires_grad_(True)
            tokens, plan = layer.dispatch(xs, idx)
            layer.combine(tokens, plan, w).sum().backward()

        tokens, plan = layer.dispatch(x, idx)
        # The restored experts as one [C, P] leaf: compute's backward then assembles their gradient as the step's does.
        ex = torch.cat([m.detach().flatten(1) for m in layer.restore_weights()], 1)
        ex.requires_grad_(True)

        def compute():
            ws = slot_weights(ex, layer.expert_parts())
            layer.compute(tokens.detach().requires_grad_(True), ws, plan).sum().backward()

        fns = (("restore_s", restore), ("token_a2a_s", a2a), ("compute_s", compute))
        for _, fn in fns:  # first calls of a fresh autograd graph shape pay one-off costs
            fn()
        out = {}
        for name, fn in fns:
            out[name], out[name.replace("_s", "_cpu_s")] = _timed(fn, cfg.reps, world)
        return out

    planner = make_planner(cfg.planner, n, cfg.slots, groups.devices_per_node)
    s0 = targets[0, rank]
    tc0 = torch.from_numpy(s0)
    for layer in layers.values():  # warm-up: allocator, DeepSpeed's groups, first-touch costs
        for _ in range(cfg.warmup):
            step(layer, tc0)()
    rows = []
    bar = range(len(picks))
    if rank == 0:
        from tqdm import tqdm
        bar = tqdm(bar, desc="samples", file=sys.stderr)
    for s in bar:
        tc = torch.from_numpy(targets[s, rank])
        placement, routing_fractions = plan_layout(planner, history[s])
        layers["fsep"].set_placement(placement, routing_fractions)
        layers["fsep_sync"].set_placement(placement, routing_fractions)
        row = {"iteration_index": picks[s][0], "layer": picks[s][1],
               "ep_imbalance": static_ep_imbalance(targets[s], n)}
        # Methods interleaved within each repetition, so a burst of load from other users of the machine hits
        # every method alike rather than one.
        times = {name: [] for name in layers}
        reps = {"ds_ep": cfg.ds_dropless_reps, "fsep_sync": cfg.sync_reps or cfg.reps}
        for rep in range(cfg.reps):
            for name, layer in layers.items():
                if rep < reps.get(name, cfg.reps):
                    times[name].append(_timed(step(layer, uniform if name == "balanced" else tc), 1, world))
        for name, v in times.items():
            row[f"{name}_s"] = statistics.median(w for w, _ in v)
            row[f"{name}_cpu_s"] = statistics.median(c for _, c in v)
        cap = capacity(t, e, k, 1.0)
        row["ds_cap1_dropped"] = sum(dropped_routes(targets[s, r], cap) for r in range(n)) / (n * t * k)
        row["fsep_dropped"] = 0.0  # dropless by construction: every route is sent to a slot of its expert
        row.update({f"fsep_{key}": v for key, v in phases(layers["fsep"], tc).items()})
        for m in ("", "_cpu"):
            row[f"restore_share{m}"] = row[f"fsep_restore{m}_s"] / row[f"fsep{m}_s"]
            row[f"overlap_saving{m}"] = 1 - row[f"fsep{m}_s"] / row[f"fsep_sync{m}_s"]
            row[f"ep_over_fsep{m}"] = row[f"ep{m}_s"] / row[f"fsep{m}_s"]
            row[f"fsep_over_balanced{m}"] = row[f"fsep{m}_s"] / row[f"balanced{m}_s"]
        rows.append(row)
    return rows if rank == 0 else None


SIZE_RATIONALE = ("tokens per rank in the paper's regime (the paper has 32,768 per device per "
                  "micro-batch); F = 3.5 H as Mixtral's 14336/4096 so expert compute dominates; default T = 16,384, "
                  "H = 128, F = 448 keeps the full default run within ~15 minutes on 2 cores")

# ---- report -----------------------------------------------------------------------------------------------------

METHODS = ["ds_ep", "ds_cap1", "ep", "fsdp_ep", "fsep", "balanced", "fsep_sync"]
PHASES = ["fsep_restore", "fsep_token_a2a", "fsep_compute"]
DERIVED = ["restore_share", "overlap_saving", "ep_over_fsep", "fsep_over_balanced"]
COLUMNS = (["iteration_index", "layer", "ep_imbalance", "ds_cap1_dropped"]
           + [f"{x}{m}_s" for m in ("", "_cpu") for x in METHODS + PHASES] + [f"{d}{m}" for m in ("", "_cpu")
                                                                              for d in DERIVED])


def targets(rows: list[dict], med: dict, m: str) -> dict:
    """The FSEP runtime's targets on metric m ("" wall clock, "_cpu" max-over-ranks CPU time): FSEP within 10% of
    the balanced limit (median); on samples with EP imbalance >= 1.3, EP / FSEP at least 90% of that imbalance;
    nothing dropped; no slower than DeepSpeed with capacity factor 1 (median)."""
    skewed = [r for r in rows if r["ep_imbalance"] >= 1.3]
    kept = [r[f"ep_over_fsep{m}"] / (0.9 * r["ep_imbalance"]) for r in skewed]
    return {
        "fsep_over_balanced_median": med[f"fsep_over_balanced{m}"],
        "fsep_over_balanced_median_le_1.10": med[f"fsep_over_balanced{m}"] <= 1.10,
        "skewed_samples": len(skewed),
        "skewed_samples_meeting_ep_gain_target": int(sum(v >= 1.0 for v in kept)),
        "ep_gain_kept_median": statistics.median(kept) if kept else None,  # (ep/fsep) / (0.9 imbalance); >= 1 meets
        "ep_gain_target_met_on_all_skewed": bool(skewed) and all(v >= 1.0 for v in kept),
        "fsep_drops_nothing": all(r["fsep_dropped"] == 0 for r in rows),
        "fsep_over_ds_cap1_median": med[f"fsep{m}_s"] / med[f"ds_cap1{m}_s"],
        "fsep_no_slower_than_ds_cap1_median": med[f"fsep{m}_s"] <= med[f"ds_cap1{m}_s"],
    }


def aggregate(rows: list[dict]) -> dict:
    med = {key: statistics.median(r[key] for r in rows) for key in COLUMNS[2:]}
    return {"median": med, "targets": {"wall": targets(rows, med, ""), "cpu": targets(rows, med, "_cpu")}}


def format_table(rows: list[dict], agg: dict) -> str:
    """Both tables (wall clock, max-over-ranks CPU), one row per sample plus the median, and the targets."""
    lines = []
    for m, title in (("", "wall clock (shared machine)"), ("_cpu", "max-over-ranks CPU time (dedicated-core estimate)")):
        cols = ["iteration_index", "layer", "ep_imbalance"] + [f"{x}{m}_s" for x in METHODS[:-1]] + [
            "ds_cap1_dropped", f"restore_share{m}", f"overlap_saving{m}", f"ep_over_fsep{m}", f"fsep_over_balanced{m}"]
        short = ["it", "L", "imb", "ds_ep", "ds_cap1", "ep", "fsdp_ep", "fsep", "bal", "drop", "restore%", "overlap%",
                 "ep/fsep", "fsep/bal"]
        lines += ["", f"{title}, seconds per forward+backward", " ".join(f"{c:>8}" for c in short)]
        for r in rows + [dict(agg["median"], iteration_index="median", layer="")]:
            cells = []
            for c in cols:
                v = r[c]
                pct = c.startswith(("ds_cap1_dropped", "restore_share", "overlap_saving"))
                cells.append(f"{v:>8}" if isinstance(v, (int, str)) else f"{100 * v:>7.1f}%" if pct else f"{v:>8.3f}")
            lines.append(" ".join(cells))
    lines.append(json.dumps(agg["targets"], indent=1))
    return "\n".join(lines)


def plot(rows: list[dict], agg: dict, bc: BenchConfig, path: Path) -> None:
    settings = {"ranks": f"{bc.ranks} gloo", "T": bc.tokens, "H": bc.hidden, "F": bc.ffn, "E": bc.experts,
                "k": bc.top_k, "C": bc.slots, "planner": bc.planner}
    fig, axes = plotting.figure(1, 2, "FSEP layer vs baselines on the SmartMoE trace (forward + backward)", settings,
                                panel_size=(6.0, 3.8))
    a, b = axes[0]
    names = METHODS[:-1]
    xs = np.arange(len(names))
    a.bar(xs - 0.2, [agg["median"][f"{n}_s"] for n in names], 0.4, label="wall (shared machine)")
    a.bar(xs + 0.2, [agg["median"][f"{n}_cpu_s"] for n in names], 0.4, label="slowest rank's CPU time")
    a.set_xticks(xs, names)
    a.set(ylabel="median step (s)", yscale="log", title="MoE layer step, median over samples")
    plotting.legend(a)
    samples = [f"{r['iteration_index']}/{r['layer']}" for r in rows]
    xs = np.arange(len(rows))
    series = [("ep_imbalance", "EP rank imbalance (max/mean)"), ("ep_over_fsep_cpu", "ep / fsep (CPU)"),
              ("fsep_over_balanced_cpu", "fsep / balanced routing (CPU)"), ("ep_over_fsep", "ep / fsep (wall)")]
    for i, (key, label) in enumerate(series):
        plotting.line(b, xs, [r[key] for r in rows], label, index=i)
    plotting.hline(b, 1.0)
    b.set_xticks(xs, samples, rotation=60, fontsize=7)
    b.set(xlabel="sample: trace iteration index / layer", ylabel="ratio", title="Per sample")
    plotting.legend(b)
    plotting.save(fig, path)


def bench_config(section, trace: Path, seed: int) -> BenchConfig:
    """The bench's settings from the `bench_fsep` config section, checked; messages name the key."""
    from training.planner import PLANNERS

    sc = section
    for key in ("tokens", "hidden", "ffn", "experts", "top_k", "ranks", "slots", "samples", "reps"):
        if int(sc[key]) < 1:
            raise ValueError(f"config key 'bench_fsep.{key}' must be >= 1, got {sc[key]}")
    for key in ("ds_dropless_reps", "sync_reps", "warmup", "window", "max_block_rows", "microbatch"):
        if int(sc[key]) < 0:
            raise ValueError(f"config key 'bench_fsep.{key}' must be >= 0, got {sc[key]}")
    if sc.planner not in PLANNERS:
        raise ValueError(f"config key 'bench_fsep.planner': unknown planner {sc.planner!r}; known: {sorted(PLANNERS)}")
    if sc.ranks * sc.slots < sc.experts:
        raise ValueError(f"config keys 'bench_fsep.ranks' * 'bench_fsep.slots' = {sc.ranks * sc.slots} < "
                         f"'bench_fsep.experts' = {sc.experts}")
    return BenchConfig(int(sc.tokens), int(sc.hidden), int(sc.ffn), int(sc.experts), int(sc.top_k), int(sc.ranks),
                       int(sc.slots), int(sc.samples), int(sc.reps), int(sc.ds_dropless_reps), int(sc.warmup),
                       str(trace), int(sc.microbatch), bool(sc.overlap_restore), int(seed), str(sc.planner),
                       int(sc.window), int(sc.sync_reps), int(sc.max_block_rows) or None)


def run(cfg, out_dir: Path) -> dict:
    """Hydra task `bench_fsep`: measure on cfg.bench_fsep.ranks gloo processes, write bench_fsep.csv and
    bench_fsep.png into out_dir, log the tables; the returned dict is what experiments.run stores in results.json."""
    from common.datapaths import ensure_files, locate_data_dir
    from common.launch import KEEP_FREED_MEMORY, run_local

    sc = cfg.bench_fsep
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ensure_files(locate_data_dir(cfg.paths.data_dir, os.environ), [sc.expert_trace], cfg.paths.fallback,
                         synthetic_dir=out_dir / "synthetic_data")
    bc = bench_config(sc, files.path(sc.expert_trace), cfg.seed)
    trace = load_trace(bc)
    picks, replay = load_samples(bc, trace)
    history = plan_loads(bc, trace, picks)
    # DeepSpeed JIT-compiles a shared-memory op at its first init; reuse the venv's cache (as the Makefile does).
    env = {"TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))}
    if sc.keep_freed_memory:
        env.update(KEEP_FREED_MEMORY)
    log.info("bench_fsep: %d samples x %d methods on %d gloo ranks (T=%d, H=%d, F=%d, E=%d, k=%d, C=%d, planner %s)",
             bc.samples, len(METHODS), bc.ranks, bc.tokens, bc.hidden, bc.ffn, bc.experts, bc.top_k, bc.slots,
             bc.planner)
    rows = run_local(_rank_main, bc.ranks, "gloo", args=(bc, picks, replay, history), env=env, num_threads=1)[0]
    agg = aggregate(rows)
    result = {"config": asdict(bc), "samples": rows, "aggregate": agg,
              "size_rationale": SIZE_RATIONALE, "workers_keep_freed_memory": bool(sc.keep_freed_memory),
              "note": "wall-clock on a shared 2-core CPU machine; gloo; one thread per rank"}
    with open(out_dir / "bench_fsep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    plot(rows, agg, bc, out_dir / "bench_fsep.png")
    log.info("%s", format_table(rows, agg))
    log.info("wrote %s and %s", out_dir / "bench_fsep.csv", out_dir / "bench_fsep.png")
    return result
