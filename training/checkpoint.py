"""Sharded, layout-independent checkpoints of a Trainer: resume exactly, on the same or another rank count.

Notation: N ranks that saved, M ranks that load, E experts, P = 3*F*H elements of one expert (w1 | w3 | w2 flat).

Layout of `<root>/step_<step>/`:
  meta.json     step, world size, model shape (checked on load), file list (written last; the folder is renamed into
                place only after every rank wrote its files, so a folder without it never looks complete)
  dense.pt      rank 0: every parameter outside the expert storage (identical on all ranks), its optimizer state, the
                LR schedule, the planner's history and layouts, the data position
  rank<r>.pt    rank r: its piece of each MoE layer's experts in the canonical flat [E, P] coordinates (rows, columns,
                value and AdamW moments), and its RNG state

Why the canonical coordinates. FSEP's storage on N ranks is columns r*ceil(P/N) .. of the flat [E, P] experts, EP's
is rows r*E/N .., one process holds them whole: every storage is a rectangle of the same [E, P] tensor, whatever the
placement (FSEP storage never depends on it). A rank saves its rectangle; a loader on any M assembles [E, P] from
the saved pieces and takes its own rectangle, so a checkpoint of N ranks resumes on M (re-sharded) and under another
parallelism. Saving writes only the local piece: nothing is gathered.

Only ZeRO stage 0 with DeepSpeed's torch AdamW is handled (ZeRO 1/2 flatten and partition the optimizer state).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from training.fsep.layer import EPMoE, FSEPMoE
from training.moe.reference import ReferenceMoE
from training.trainer import Trainer, is_expert_param, rng_state, set_rng_state

MOMENTS = ("exp_avg", "exp_avg_sq")  # torch AdamW state tensors shaped like the parameter


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, partial, corrupt, or from another model."""


# ---- expert storage <-> canonical [E, P] rectangles ---------------------------------------------------------------
def _moe_layers(module: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in module.named_modules() if isinstance(m, (FSEPMoE, EPMoE, ReferenceMoE))}


def _storage_params(layer: nn.Module) -> list[nn.Parameter]:
    if isinstance(layer, FSEPMoE):
        return [layer.expert_shard]
    if isinstance(layer, EPMoE):
        return [layer.local_experts]
    return [layer.w1, layer.w3, layer.w2]


def _export(layer: nn.Module, get) -> tuple[tuple[int, int], tuple[int, int], torch.Tensor]:
    """(rows, cols, piece) of the canonical [E, P] tensor this rank holds; get(param) -> the tensor to save for it
    (the parameter, or one of its optimizer moments)."""
    e, p = layer.num_experts, 3 * layer.ffn * layer.hidden
    if isinstance(layer, FSEPMoE):
        r, s = layer.groups.rank, layer.shard_width
        lo, hi = min(r * s, p), min((r + 1) * s, p)
        return (0, e), (lo, hi), get(layer.expert_shard)[:, : hi - lo]
    if isinstance(layer, EPMoE):
        c, r = layer.slots_per_device, layer.groups.rank
        return (r * c, (r + 1) * c), (0, p), get(layer.local_experts)
    return (0, e), (0, p), torch.cat([get(w).flatten(1) for w in (layer.w1, layer.w3, layer.w2)], 1)


def _import(layer: nn.Module, flat: torch.Tensor) -> list[torch.Tensor]:
    """This rank's storage tensors (in _storage_params order) cut from the canonical flat [E, P]."""
    if isinstance(layer, FSEPMoE):
        r, s, n = layer.groups.rank, layer.shard_width, layer.groups.size
        padded = nn.functional.pad(flat, (0, n * s - flat.shape[1]))
        return [padded[:, r * s:(r + 1) * s]]
    if isinstance(layer, EPMoE):
        c, r = layer.slots_per_device, layer.groups.rank
        return [flat[r * c:(r + 1) * c]]
    e, f, h = layer.num_experts, layer.ffn, layer.hidden
    return [flat[:, : f * h].reshape(e, f, h), flat[:, f * h: 2 * f * h].reshape(e, f, h),
            flat[:, 2 * f * h:].reshape(e, h, f)]


# ---- save ---------------------------------------------------------------------------------------------------------
def _model_meta(trainer: Trainer) -> dict:
    cfg = getattr(trainer.model, "cfg", None)
    return asdict(cfg) if cfg is not None else {}


def save(root: str | Path, trainer: Trainer, balancer=None, extra: dict | None = None) -> Path:
    """Write step_<trainer.step_count> under root (every rank calls it; communicates: barriers). Returns its path."""
    root = Path(root)
    rank, world = dist.get_rank(), dist.get_world_size()
    optimizer = _torch_optimizer(trainer)
    final = root / f"step_{trainer.step_count:06d}"
    tmp = root / f".step_{trainer.step_count:06d}.tmp"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)  # a save that failed before
        tmp.mkdir(parents=True)
    dist.barrier()
    layers = _moe_layers(trainer.module)
    storage = {id(p) for m in layers.values() for p in _storage_params(m)}
    foreign = [n for n, p in trainer.module.named_parameters() if is_expert_param(p) and id(p) not in storage]
    if foreign:  # e.g. DeepSpeed-MoE's own experts: per-rank values this format does not know how to cut
        raise CheckpointError(f"checkpointing supports FSEP, FSDP+EP and EP storage; {foreign[0]} is another kind "
                              "of expert parameter (parallel=deepspeed_ep?)")
    pieces = {}
    for name, layer in layers.items():
        rows, cols, value = _export(layer, lambda p: p.detach())
        piece = {"rows": rows, "cols": cols, "value": value.clone()}
        state = optimizer.state.get(_storage_params(layer)[0], {})
        if state:
            piece["step"] = state["step"]
            for key in MOMENTS:
                piece[key] = _export(layer, lambda p, k=key: optimizer.state[p][k])[2].clone()
        pieces[name] = piece
    torch.save({"experts": pieces, "rng": rng_state()}, tmp / f"rank{rank}.pt")
    if rank == 0:
        dense = {n: p.detach().clone() for n, p in trainer.module.named_parameters() if id(p) not in storage}
        params = dict(trainer.module.named_parameters())
        optim = {n: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in optimizer.state[params[n]].items()}
                 for n in dense if params[n] in optimizer.state}
        sched = trainer.engine.lr_scheduler
        torch.save({"model": dense, "optim": optim, "scheduler": sched.state_dict() if sched is not None else None,
                    "lrs": [g["lr"] for g in optimizer.param_groups],
                    "step": trainer.step_count, "balancer": balancer.state_dict() if balancer is not None else None,
                    "extra": extra or {}}, tmp / "dense.pt")
        files = ["dense.pt"] + [f"rank{r}.pt" for r in range(world)]
        (tmp / "meta.json").write_text(json.dumps({"step": trainer.step_count, "world_size": world,
                                                   "model": _model_meta(trainer), "files": files}, indent=1))
    dist.barrier()
    if rank == 0:
        tmp.rename(final)  # atomic: the folder appears complete or not at all
    dist.barrier()
    return final


def _torch_optimizer(trainer: Trainer) -> torch.optim.Optimizer:
    opt = trainer.engine.optimizer
    if trainer.cfg.zero_stage != 0 or not isinstance(opt, torch.optim.Optimizer):
        raise CheckpointError(f"checkpointing needs trainer.zero_stage=0 with DeepSpeed's torch AdamW, got stage "
                              f"{trainer.cfg.zero_stage} with {type(opt).__name__}")
    return opt


# ---- load ---------------------------------------------------------------------------------------------------------
def latest(root: str | Path) -> Path | None:
    """The newest complete checkpoint under root (a step_* folder with meta.json), or None."""
    done = sorted(p for p in Path(root).glob("step_*") if (p / "meta.json").is_file())
    return done[-1] if done else None


def _read(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing (partial checkpoint)")
    try:
        # Our own files, holding numpy arrays (RNG, planner history) besides tensors: not weights_only.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise CheckpointError(f"checkpoint file {path} is corrupt or truncated ({type(err).__name__}: {err})") from None


def load(path: str | Path, trainer: Trainer, balancer=None) -> dict:
    """Restore `trainer` (and balancer) from the checkpoint folder `path`, saved on any number of ranks and any
    parallelism of the same model. Returns the saved `extra` dict. Raises CheckpointError naming the file."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint {path} has no meta.json: not a checkpoint, or a save that did not finish")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint file {meta_path} is corrupt ({err})") from None
    mine = _model_meta(trainer)
    for key in sorted(set(meta["model"]) | set(mine)):
        if meta["model"].get(key) != mine.get(key):
            raise CheckpointError(f"checkpoint {path} is of another model: model.{key} = {meta['model'].get(key)} "
                                  f"there, {mine.get(key)} here")
    optimizer = _torch_optimizer(trainer)
    dense = _read(path / "dense.pt")
    ranks = [_read(path / f"rank{r}.pt") for r in range(meta["world_size"])]
    params = dict(trainer.module.named_parameters())
    with torch.no_grad():
        for name, value in dense["model"].items():
            if name not in params or params[name].shape != value.shape:
                raise CheckpointError(f"checkpoint {path}: parameter {name} {tuple(value.shape)} does not fit this "
                                      "model")
            params[name].copy_(value)
            if name in dense["optim"]:
                optimizer.state[params[name]] = {k: (v.clone() if torch.is_tensor(v) else v)
                                                 for k, v in dense["optim"][name].items()}
        for name, layer in _moe_layers(trainer.module).items():
            saved = [r["experts"].get(name) for r in ranks]
            if any(s is None for s in saved):
                raise CheckpointError(f"checkpoint {path}: no experts saved for MoE layer {name}")
            keys = ("value",) + (MOMENTS if "step" in saved[0] else ())
            for key in keys:
                flat = _assemble(saved, key, layer)
                for p, t in zip(_storage_params(layer), _import(layer, flat)):
                    if key == "value":
                        p.copy_(t)
                    else:
                        optimizer.state.setdefault(p, {"step": saved[0]["step"].clone()})[key] = t.clone()
    if dense["scheduler"] is not None and trainer.engine.lr_scheduler is not None:
        trainer.engine.lr_scheduler.load_state_dict(dense["scheduler"])
    for group in optimizer.param_groups:  # the schedule set them at its last step; every group shares one lr
        group["lr"] = dense["lrs"][0]
    trainer.step_count = dense["step"]
    trainer.engine.global_steps = dense["step"]
    if balancer is not None and dense["balancer"] is not None:
        balancer.load_state_dict(dense["balancer"])
    set_rng_state(ranks[min(dist.get_rank(), len(ranks) - 1)]["rng"])
    return dense["extra"]


def _assemble(saved: list[dict], key: str, layer) -> torch.Tensor:
    """The canonical [E, P] tensor `key` from the ranks' rectangles (they tile it exactly)."""
    e, p = layer.num_experts, 3 * layer.ffn * layer.hidden
    flat = torch.zeros(e, p, dtype=saved[0][key].dtype)
    covered = torch.zeros(e, p, dtype=torch.bool)
    for s in saved:
        (r0, r1), (c0, c1) = s["rows"], s["cols"]
        flat[r0:r1, c0:c1] = s[key]
        covered[r0:r1, c0:c1] = True
    if not covered.all():
        raise CheckpointError(f"checkpoint pieces of an MoE layer leave {int((~covered).sum())} of its {e * p} "
                              "expert elements uncovered (partial checkpoint)")
    return flat.to(layer.router.weight.device)
