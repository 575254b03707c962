"""Hydra task `train`: train a MoEDecoder on N ranks with a chosen parallelism and planner, log every step, write
train.csv + train.png, checkpoint and resume.

    python -m experiments.run experiment=laer/train model=tiny_mixtral parallel=fsep planner=laer_plus trainer.steps=200
    torchrun --nproc_per_node 2 -m experiments.run experiment=laer/train hydra.run.dir=outputs/train_tr

Launch: under torchrun (or the deepspeed launcher) the process group comes from the environment they set
(WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT); otherwise this spawns `train.ranks` local processes itself
(common.launch). The backend follows the device: NCCL with CUDA, gloo without.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from experiments.tables import headline_row
from training.train_config import DataConfig, Parallel, PlannerConfig, TrainerConfig

log = logging.getLogger(__name__)

COLUMNS = ["step", "loss", "aux_loss", "lr", "grad_norm", "step_s", "step_cpu_s", "tokens_per_s", "max_device_tokens",
           "mean_device_tokens", "imbalance", "planner_solve_s", "planner_wait_s", "plan_lag"]


@dataclass
class RunSpec:
    """Everything a rank needs (picklable: sent to spawned ranks)."""

    model: dict
    parallel: Parallel
    planner: PlannerConfig
    trainer: TrainerConfig
    data: DataConfig
    slots_per_device: int
    devices_per_node: int | None  # None: the launcher's LOCAL_WORLD_SIZE, else all ranks on one node
    seed: int
    out_dir: str
    checkpoint_dir: str
    checkpoint_every: int
    resume: str | None
    log_every: int
    tokens: object = None  # [T] int64 token stream (loaded once in the parent)
    replay: object = None  # training.data.TraceReplay, or None: the routers route
    extra: dict = field(default_factory=dict)


def distribute(model, parallel: Parallel, groups, slots_per_device: int, deepspeed_kwargs: dict | None = None):
    """Swap every block's MoE for the distributed layer of `parallel` (same weights; training.fsep.apply).
    deepspeed_kwargs: apply_deepspeed_moe's drop_tokens / capacity_factor (the capacity-mode baseline)."""
    from training.fsep.apply import apply_deepspeed_moe, apply_ep, apply_fsdp_ep, apply_fsep

    if parallel is Parallel.fsep:
        return apply_fsep(model, groups, slots_per_device)
    if parallel is Parallel.fsdp_ep:
        return apply_fsdp_ep(model, groups, slots_per_device)
    if parallel is Parallel.ep:
        return apply_ep(model, groups)
    return apply_deepspeed_moe(model, groups.size, **(deepspeed_kwargs or {}))


def build(spec: RunSpec, rank: int, world: int):
    """(trainer, balancer, batches) of this rank."""
    import torch
    import torch.distributed as dist

    from training.data import TokenBatches
    from training.fsep import FSEPGroups
    from training.fsep.apply import distributed_layers
    from training.loads import LoadBalancer
    from training.model import MoEDecoder, lm_loss, model_config
    from training.planner import make_planner
    from training.trainer import Trainer, device_for

    mcfg = model_config(spec.model)
    # On its device before the transform: the distributed layers keep layout tensors where their weights are.
    model = MoEDecoder(mcfg, seed=spec.seed).to(device_for(int(os.environ.get("LOCAL_RANK", rank))))
    if world > 1:
        # Spawned ranks share this machine: one node, unless the config says otherwise.
        env = os.environ if "LOCAL_WORLD_SIZE" in os.environ or spec.devices_per_node else {"LOCAL_WORLD_SIZE": str(world)}
        g = FSEPGroups.from_launcher(dist.group.WORLD, env, spec.devices_per_node).devices_per_node
        # Restore and gradient traffic on their own group, so NCCL runs them beside the token all-to-alls.
        groups = FSEPGroups.create(dist.group.WORLD, devices_per_node=g)
        model = distribute(model, spec.parallel, groups, spec.slots_per_device, spec.extra.get("deepspeed"))
    layers = distributed_layers(model)
    balancer = None
    if layers:
        planner = None
        if spec.parallel is Parallel.fsep:
            planner = make_planner(spec.planner.name, world, spec.slots_per_device, groups.devices_per_node)
        balancer = LoadBalancer(layers, dist.group.WORLD, planner, spec.planner.window, spec.planner.wait)
    batches = TokenBatches(spec.tokens, spec.data.seq_len, spec.data.global_batch, rank, world, spec.data.seed)
    trainer = Trainer(model, spec.trainer, batches.batch_per_rank, lm_loss, balancer)
    torch.manual_seed(spec.seed + rank)
    return trainer, balancer, batches


def row_of(m) -> dict:
    """One CSV row from StepMetrics."""
    row = {"step": m.step, "loss": m.loss, "aux_loss": m.aux_loss, "lr": m.lr, "grad_norm": m.grad_norm,
           "step_s": m.step_s, "step_cpu_s": m.step_cpu_s, "tokens_per_s": m.tokens_per_s}
    if m.loads is not None:
        tok = m.loads.device_tokens  # [L, N]
        row.update(max_device_tokens=float(tok.max(1).mean()), mean_device_tokens=float(tok.mean()),
                   imbalance=float((tok.max(1) / tok.mean(1).clip(min=1)).mean()), planner_solve_s=m.loads.solve_s,
                   planner_wait_s=m.loads.wait_s, plan_lag=m.loads.plan_lag)
    return row


def _rank_main(rank: int, world: int, spec: RunSpec) -> list[dict]:
    os.environ.setdefault("LOCAL_RANK", str(rank))  # DeepSpeed reads it; torchrun sets it, common.launch does not
    if rank == 0 and not logging.getLogger().handlers:  # a spawned rank: Hydra configured only the parent
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][rank 0][%(name)s] %(message)s")
    from tqdm import tqdm

    from training import checkpoint

    trainer, balancer, batches = build(spec, rank, world)
    replay = spec.replay
    if spec.resume:
        path = Path(spec.resume)
        found = path if (path / "meta.json").is_file() else checkpoint.latest(path)
        if found is None:
            raise FileNotFoundError(f"train.resume: no complete checkpoint in {path}")
        checkpoint.load(found, trainer, balancer)
        log.info("resumed from %s at step %d", found, trainer.step_count)
    rows, m_per_step = [], spec.trainer.micro_batches
    bar = tqdm(total=spec.trainer.steps, initial=trainer.step_count, disable=rank != 0, desc="train",
               dynamic_ncols=True)
    try:
        while trainer.step_count < spec.trainer.steps:
            micro = []
            for i in range(m_per_step):
                g = trainer.step_count * m_per_step + i
                tokens = batches(g)
                micro.append((tokens, None if replay is None else replay(g, rank, tokens.numel())))
            row = row_of(trainer.step(micro))
            rows.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
            if rank == 0 and (row["step"] % spec.log_every == 0 or trainer.step_count == spec.trainer.steps):
                log.info("step %d loss %.4f aux %.4f lr %.2e tokens/s %.0f step %.3fs imbalance %s planner %s",
                         row["step"], row["loss"], row["aux_loss"], row["lr"], row["tokens_per_s"], row["step_s"],
                         _fmt(row.get("imbalance")), _fmt_planner(row))
            if spec.checkpoint_every and trainer.step_count % spec.checkpoint_every == 0:
                checkpoint.save(spec.checkpoint_dir, trainer, balancer)
    finally:
        bar.close()
        if balancer is not None:
            balancer.close()
    return rows


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _fmt_planner(row) -> str:
    if row.get("plan_lag") is None:
        return "-"
    return f"solve {row['planner_solve_s'] * 1e3:.1f}ms wait {row['planner_wait_s'] * 1e3:.1f}ms lag {row['plan_lag']}"


def _torchrun_main(spec: RunSpec) -> list[dict]:
    """This process is one rank of an external launcher: join its group, run, share rank 0's rows."""
    import torch
    import torch.distributed as dist

    from training.trainer import backend_for, device_for

    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = device_for(local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device))
    try:
        rows = _rank_main(dist.get_rank(), dist.get_world_size(), spec)
        box = [rows]
        dist.broadcast_object_list(box, src=0)  # every rank returns (and results.json holds) rank 0's rows
        return box[0]
    finally:
        dist.destroy_process_group()


def spec_of(cfg, out_dir: Path) -> RunSpec:
    """RunSpec from the composed config, with every bad value a one-line error naming its key."""
    from training.planner import PLANNERS

    tc = cfg.train
    model = OmegaConf.to_container(cfg.model, resolve=True)
    planner = OmegaConf.to_object(cfg.planner)
    if planner.name not in PLANNERS:
        raise ValueError(f"planner.name: unknown planner {planner.name!r}; known: {sorted(PLANNERS)}")
    world = int(os.environ.get("WORLD_SIZE", tc.ranks))
    e = model["num_experts"]
    if cfg.parallel in (Parallel.fsep, Parallel.fsdp_ep) and world > 1 and world * tc.slots_per_device < e:
        raise ValueError(f"train.slots_per_device: N*C = {world}*{tc.slots_per_device} slots cannot hold "
                         f"model.num_experts = {e}; use at least {-(-e // world)}")
    if cfg.parallel in (Parallel.ep, Parallel.deepspeed_ep) and e % world:
        raise ValueError(f"parallel={cfg.parallel.name} needs model.num_experts = {e} divisible by the {world} ranks")
    data = OmegaConf.to_object(cfg.data)
    if data.vocab_size > model["vocab_size"]:
        raise ValueError(f"data.vocab_size = {data.vocab_size} exceeds model.vocab_size = {model['vocab_size']}")
    replay = None
    if tc.trace_replay:
        from common.datapaths import ensure_files, locate_data_dir
        from common.traces import load_expert_trace
        from training.data import TraceReplay

        files = ensure_files(locate_data_dir(cfg.paths.data_dir, os.environ), [tc.expert_trace], cfg.paths.fallback,
                             synthetic_dir=out_dir / "synthetic_data")
        trainer = cfg.trainer
        replay = TraceReplay(load_expert_trace(files.path(tc.expert_trace)), model["num_layers"], e, model["top_k"],
                             world, trainer.steps * trainer.micro_batches)
    return RunSpec(model=model, parallel=cfg.parallel, planner=planner, trainer=OmegaConf.to_object(cfg.trainer),
                   data=data, slots_per_device=tc.slots_per_device, devices_per_node=tc.devices_per_node,
                   seed=cfg.seed, out_dir=str(out_dir),
                   checkpoint_dir=tc.checkpoint_dir or str(out_dir / "checkpoints"),
                   checkpoint_every=tc.checkpoint_every, resume=tc.resume, log_every=tc.log_every, replay=replay)


def run(cfg, out_dir: Path) -> dict:
    """Hydra task `train`: returns the per-step rows and a summary (experiments.run writes results.json)."""
    from common.launch import run_local
    from training.data import load_corpus

    out_dir = Path(out_dir)
    spec = spec_of(cfg, out_dir)
    tokenizer, spec.tokens = load_corpus(spec.data)
    world = int(os.environ.get("WORLD_SIZE", cfg.train.ranks))
    log.info("train: %s on %d ranks, planner %s (window %d), %d steps, corpus %d tokens (vocab %d)",
             spec.parallel.name, world, spec.planner.name, spec.planner.window, spec.trainer.steps,
             len(spec.tokens), tokenizer.get_vocab_size())
    if "WORLD_SIZE" in os.environ:
        rows = _torchrun_main(spec)
        is_writer = int(os.environ.get("RANK", "0")) == 0
    else:
        from training.trainer import backend_for, device_for

        # DeepSpeed JIT-compiles a shared-memory op at its first init; reuse the venv's cache (as the Makefile does).
        env = {"TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR",
                                                      str(Path(sys.prefix) / "torch_extensions"))}
        rows = run_local(_rank_main, world, backend_for(device_for(0)), args=(spec,), env=env,
                         num_threads=cfg.train.threads_per_rank)[0]
        is_writer = True
    if is_writer and rows:
        write_outputs(rows, out_dir, spec, world)
    return summary(rows, spec, world)


def summary(rows: list[dict], spec: RunSpec, world: int) -> dict:
    if not rows:
        return {"steps": 0, "rows": []}
    first, last = rows[0]["loss"], rows[-1]["loss"]
    tail = rows[len(rows) // 2:]
    out = {"parallel": spec.parallel.name, "planner": spec.planner.name, "ranks": world, "steps": len(rows),
           "first_loss": first, "last_loss": last,
           "mean_tokens_per_s_second_half": sum(r["tokens_per_s"] for r in tail) / len(tail), "rows": rows}
    if "planner_solve_s" in rows[-1]:
        out["planner_solve_s_total"] = sum(r.get("planner_solve_s", 0.0) for r in rows)
        out["planner_wait_s_total"] = sum(r.get("planner_wait_s", 0.0) for r in rows)
        out["planner_wait_s_max"] = max(r.get("planner_wait_s", 0.0) for r in rows)
        out["step_s_total"] = sum(r["step_s"] for r in rows)
        # The planner's share of the critical path: rank 0's waits for plans over its step time (should be ~0).
        out["planner_wait_fraction"] = out["planner_wait_s_total"] / max(out["step_s_total"], 1e-12)
    out["headline"] = headline_rows(out, tail)
    return out


def headline_rows(out: dict, tail: list[dict]) -> list[dict]:
    """What a short run shows: the loss falls, the device load stays near balanced and the planner stays off the
    critical path. The paper trains at cluster scale, so it has no number to put beside these."""
    setting = f"{out['parallel']} + {out['planner']}, {out['ranks']} ranks, {out['steps']} steps"
    rows = [headline_row("Training", setting, "LM loss, first step", out["first_loss"]),
            headline_row("Training", setting, "LM loss, last step", out["last_loss"]),
            headline_row("Training", setting, "tokens/s (second half)", out["mean_tokens_per_s_second_half"])]
    imbalance = [r["imbalance"] for r in tail if r.get("imbalance") is not None]
    if imbalance:
        rows.append(headline_row("Training", setting, "max/mean device tokens (second half)",
                                 sum(imbalance) / len(imbalance)))
    if "planner_wait_fraction" in out:
        rows.append(headline_row("Training", setting, "planner wait / step time", out["planner_wait_fraction"]))
    return rows


def write_outputs(rows: list[dict], out_dir: Path, spec: RunSpec, world: int) -> None:
    from experiments import plotting

    with open(out_dir / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    steps = [r["step"] for r in rows]
    fig, axes = plotting.figure(1, 2, "Training", settings={"parallel": spec.parallel.name, "planner":
                                                            spec.planner.name, "ranks": world})
    plotting.line(axes[0, 0], steps, [r["loss"] for r in rows], "loss", index=0, markersize=2)
    axes[0, 0].set_xlabel("step")
    axes[0, 0].set_ylabel("LM loss")
    plotting.line(axes[0, 1], steps, [r["step_s"] for r in rows], "step time", index=1, markersize=2)
    axes[0, 1].set_xlabel("step")
    axes[0, 1].set_ylabel("wall-clock seconds per step")
    for ax in axes[0]:
        plotting.legend(ax)
    plotting.save(fig, out_dir / "train.png")
    log.info("wrote %s and %s", out_dir / "train.csv", out_dir / "train.png")
