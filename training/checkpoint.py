"""Sharded checkpoints of a Trainer on `torch.distributed.checkpoint` (DCP): resume exactly, on the same or another
rank count.

Notation: N ranks that saved, M ranks that load, E experts, P = 3*F*H elements of one expert (w1 | w3 | w2 flat),
S = ceil(P/N) FSEP shard width.

Layout of `<root>/step_<step>/`:
  .metadata, __<r>_0.distcp   DCP's files: every rank writes its own pieces (nothing is gathered)
  meta.json                   step, world size, model shape (checked on load); written last, and the folder is
                              renamed into place only after every rank wrote its files, so a folder without it never
                              looks complete

Keys of the DCP state dict (one flat dict, no nesting):
  experts/<layer>                 every MoE layer's experts as ONE logical [E, P] tensor
  optim/<layer>/<moment>          their AdamW moments (exp_avg, exp_avg_sq), same layout
  model/<param>, optim/<param>/<moment>   every other parameter (identical on all ranks: DCP writes it once) and its
                                  moments; the fp32 master value where DeepSpeed keeps one (bf16, ZeRO)
  optim_step, scheduler, lrs, trainer_step, balancer, extra   replicated objects: the AdamW step count, LR
                                  schedule, planner history and layouts, data position (the step: batches are a
                                  function of it), the caller's extra
  rng/<r>                         rank r's RNG states

Why one logical [E, P] tensor per layer. Every storage is a rectangle of it, whatever the layout (FSEP storage never
depends on the placement): FSEP rank r holds columns r*S .. min((r+1)*S, P) - 1 of every expert, which is
`torch.chunk(P, N)`, i.e. DTensor's Shard(1); EP and DeepSpeed-MoE rank r hold rows r*E/N .. (r+1)*E/N - 1
(Shard(0)); one process holds it whole (a plain tensor). Each rank saves its rectangle as a DTensor on a CPU (or
CUDA) DeviceMesh of its expert group, and DCP's resharding reads, on any M, the overlapping parts of the saved
rectangles into the loader's own: a checkpoint of N ranks resumes on M and under another parallelism of the same
model (dense parameter names must match: DeepSpeed-MoE names its router differently, so its checkpoints resume
under DeepSpeed-MoE only, on any M that divides E).

Dense optimizer state is read and written per parameter in full (DeepSpeed's safe_get/safe_set_full_* under ZeRO
1/2 and bf16, which gather and scatter the flat partitions), so it too is independent of N and of the ZeRO stage.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from training.fsep.deepspeed_ep import DeepSpeedEP
from training.fsep.layer import EPMoE, FSEPMoE
from training.moe.reference import ReferenceMoE
from training.trainer import Trainer, is_expert_param, rng_state, set_rng_state

MOMENTS = ("exp_avg", "exp_avg_sq")  # torch AdamW state tensors shaped like the parameter
META = "meta.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, partial, corrupt, or from another model."""


# ---- expert storage <-> the logical [E, P] tensor -----------------------------------------------------------------
@dataclass(frozen=True)
class _Storage:
    """How one MoE layer's expert storage sits in the logical [E, P] tensor on this rank."""

    params: list[nn.Parameter]  # the storage parameters
    pack: Callable[[list[torch.Tensor]], torch.Tensor]  # tensors shaped like params -> this rank's rectangle
    unpack: Callable[[torch.Tensor], list[torch.Tensor]]  # the rectangle -> tensors shaped like params
    shard_dim: int | None  # DTensor Shard(dim) over the expert group; None: one process holds [E, P] whole
    group: dist.ProcessGroup | None  # the expert group (None with shard_dim None)
    shape: tuple[int, int]  # (E, P)


def _flat(w1, w3, w2) -> torch.Tensor:
    """[..., P] of SwiGLU weights w1, w3 [.., F, H] and w2 [.., H, F] (the FSEP flat order)."""
    lead = w1.shape[:-2]
    return torch.cat([w1.reshape(*lead, -1), w3.reshape(*lead, -1), w2.reshape(*lead, -1)], -1)


def _unflat(flat: torch.Tensor, f: int, h: int) -> list[torch.Tensor]:
    lead = flat.shape[:-1]
    return [flat[..., : f * h].reshape(*lead, f, h), flat[..., f * h: 2 * f * h].reshape(*lead, f, h),
            flat[..., 2 * f * h:].reshape(*lead, h, f)]


def _storage(layer: nn.Module) -> _Storage:
    if isinstance(layer, FSEPMoE):
        e, p, s, r = layer.num_experts, layer.num_elements, layer.shard_width, layer.groups.rank
        width = max(0, min((r + 1) * s, p) - r * s)  # the last ranks' pieces are short (zero padding not saved)
        return _Storage([layer.expert_shard], lambda t: t[0][:, :width],
                        lambda x: [nn.functional.pad(x, (0, s - width))], 1, layer.groups.ep, (e, p))
    if isinstance(layer, EPMoE):
        return _Storage([layer.local_experts], lambda t: t[0], lambda x: [x], 0, layer.groups.ep,
                        (layer.num_experts, layer.num_elements))
    if isinstance(layer, DeepSpeedEP):
        experts = layer.moe.deepspeed_moe.experts.deepspeed_experts
        f, h = experts[0].w1.shape
        params = [w for ex in experts for w in (ex.w1, ex.w3, ex.w2)]
        return _Storage(params, lambda t: _flat(torch.stack(t[0::3]), torch.stack(t[1::3]), torch.stack(t[2::3])),
                        lambda x: [w[i] for i in range(len(experts)) for w in _unflat(x, f, h)], 0,
                        dist.group.WORLD, (layer.moe.num_experts, 3 * f * h))
    e, f, h = layer.num_experts, layer.ffn, layer.hidden
    return _Storage([layer.w1, layer.w3, layer.w2], lambda t: _flat(*t), lambda x: _unflat(x, f, h), None, None,
                    (e, 3 * f * h))


def _moe_layers(module: nn.Module) -> dict[str, _Storage]:
    kinds = (FSEPMoE, EPMoE, ReferenceMoE, DeepSpeedEP)
    return {name: _storage(m) for name, m in module.named_modules() if isinstance(m, kinds)}


def _logical(store: _Storage, local: torch.Tensor):
    """The rectangle as DCP sees it: a DTensor piece of [E, P] (or the plain tensor in one process)."""
    local = local.contiguous()  # a view would make DCP write its whole storage (FSEP's padding too)
    if store.shard_dim is None:
        return local
    from torch.distributed.tensor import DeviceMesh, DTensor, Shard

    mesh = DeviceMesh.from_group(store.group, local.device.type)
    e, p = store.shape
    return DTensor.from_local(local, mesh, [Shard(store.shard_dim)], run_check=False, shape=(e, p), stride=(p, 1))


# ---- optimizer state, whatever DeepSpeed wraps torch's AdamW in ---------------------------------------------------
class _Optim:
    """Per-parameter master value and moments. Stage 0 fp32: torch's AdamW itself. ZeRO 1/2 and bf16: DeepSpeed's
    flat fp32 partitions through safe_get/safe_set_full_* (collective over the parameter's data-parallel group:
    every rank calls them on every parameter in the same order)."""

    def __init__(self, trainer: Trainer):
        opt = trainer.engine.optimizer
        self.plain = isinstance(opt, torch.optim.Optimizer)
        if not self.plain and not hasattr(opt, "_lazy_init_hp_params_optimizer_state"):
            # DeepSpeed's FP16_Optimizer (bf16 at ZeRO stage 0) keeps no per-parameter map of its flat state.
            raise CheckpointError(f"checkpointing cannot read DeepSpeed's {type(opt).__name__} (trainer.precision="
                                  f"{trainer.cfg.precision.name} with trainer.zero_stage={trainer.cfg.zero_stage}); "
                                  "use trainer.zero_stage=1 or 2 for bf16")
        self.opt = opt
        self.inner = opt if self.plain else opt.optimizer  # the torch optimizer over the flat partitions
        if not self.plain and self.started():
            self._link()

    def _link(self) -> None:
        """Point every parameter's fragment at the current AdamW state. DeepSpeed links lazily (for its own saves),
        possibly before the state existed, which leaves the fragments empty: relink."""
        self.opt._hp_optimizer_states_linked = False
        self.opt._lazy_init_hp_params_optimizer_state()

    def started(self) -> bool:
        return any(self.inner.state.values())

    def step(self) -> float:
        return float(next(s["step"] for s in self.inner.state.values() if s))

    def get(self, p: nn.Parameter, key: str) -> torch.Tensor:
        if self.plain:
            return self.inner.state[p][key]
        from deepspeed.utils import safe_get_full_optimizer_state

        return safe_get_full_optimizer_state(p, key)

    def master(self, p: nn.Parameter) -> torch.Tensor:
        if self.plain:
            return p.detach()
        from deepspeed.utils import safe_get_full_fp32_param

        return safe_get_full_fp32_param(p)

    def prepare(self, step: float) -> None:
        """Create the (lazily made) AdamW state at `step` so the moments can be set."""
        groups = [p for g in self.inner.param_groups for p in g["params"]]
        for p in groups:
            self.inner.state[p] = {"step": torch.tensor(step, dtype=torch.float32),
                                   **{k: torch.zeros_like(p) for k in MOMENTS}}
        if not self.plain:
            self._link()

    def set(self, p: nn.Parameter, key: str, value: torch.Tensor) -> None:
        if self.plain:
            self.inner.state[p][key].copy_(value)
            return
        from deepspeed.utils import safe_set_full_optimizer_state

        safe_set_full_optimizer_state(p, value.to(p.device, torch.float32), key)

    def set_master(self, p: nn.Parameter, value: torch.Tensor) -> None:
        with torch.no_grad():
            p.copy_(value)
        if not self.plain:
            from deepspeed.utils import safe_set_full_fp32_param

            safe_set_full_fp32_param(p, value.to(p.device, torch.float32))


# ---- the state dict -----------------------------------------------------------------------------------------------
def _tensors(trainer: Trainer, optim: _Optim, with_moments: bool) -> dict:
    """Every tensor entry of this rank's state dict (module doc), as views of the live state where possible."""
    out = {}
    layers = _moe_layers(trainer.module)
    storage = {id(p) for s in layers.values() for p in s.params}
    for name, s in layers.items():
        out[f"experts/{name}"] = _logical(s, s.pack([optim.master(p).reshape(p.shape) for p in s.params]))
        if with_moments:
            for k in MOMENTS:
                out[f"optim/{name}/{k}"] = _logical(s, s.pack([optim.get(p, k).reshape(p.shape) for p in s.params]))
    for name, p in trainer.module.named_parameters():
        if id(p) in storage:
            continue
        if is_expert_param(p):  # expert storage of a kind this module does not know how to cut
            raise CheckpointError(f"checkpointing does not know the expert parameter {name}")
        out[f"model/{name}"] = optim.master(p).reshape(p.shape)
        if with_moments:
            for k in MOMENTS:
                out[f"optim/{name}/{k}"] = optim.get(p, k).reshape(p.shape)
    return out


def _model_meta(trainer: Trainer) -> dict:
    cfg = getattr(trainer.model, "cfg", None)
    return asdict(cfg) if cfg is not None else {}


class _Blob:
    """A picklable object as one DCP entry. DCP's Stateful protocol, because dcp.load hands a loaded non-tensor back
    only through load_state_dict (it fills a copy of the dict it was given); the entry is the object pickled to
    bytes, a leaf, because DCP flattens containers into entries of their own (and drops empty ones)."""

    def __init__(self, value=None):
        self.value = value

    def state_dict(self) -> bytes:
        return pickle.dumps(self.value)

    def load_state_dict(self, value: bytes) -> None:
        self.value = pickle.loads(value)


# ---- save ---------------------------------------------------------------------------------------------------------
def save(root: str | Path, trainer: Trainer, balancer=None, extra: dict | None = None) -> Path:
    """Write step_<trainer.step_count> under root (every rank calls it; communicates: DCP's plan gather, barriers).
    Returns its path."""
    root = Path(root)
    rank, world = dist.get_rank(), dist.get_world_size()
    optim = _Optim(trainer)  # first: an optimizer it cannot read fails before anything is written
    final = root / f"step_{trainer.step_count:06d}"
    tmp = root / f".step_{trainer.step_count:06d}.tmp"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)  # a save that failed before
        tmp.mkdir(parents=True)
    dist.barrier()
    started = optim.started()
    state = _tensors(trainer, optim, started)
    sched = trainer.engine.lr_scheduler
    objects = {
        "optim_step": optim.step() if started else None,
        "scheduler": sched.state_dict() if sched is not None else None,
        "lrs": [g["lr"] for g in optim.opt.param_groups],
        "trainer_step": trainer.step_count,
        "balancer": balancer.state_dict() if balancer is not None else None,
        "extra": extra or {},
        f"rng/{rank}": rng_state(),
    }
    state.update({k: _Blob(v) for k, v in objects.items()})
    try:
        dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp))
    except dcp.CheckpointException as err:  # a BaseException: callers catching Exception would miss it
        raise OSError(f"checkpoint save into {tmp} failed: {_last_line(err)}") from err
    if rank == 0:
        (tmp / META).write_text(json.dumps({"step": trainer.step_count, "world_size": world,
                                            "model": _model_meta(trainer)}, indent=1))
    dist.barrier()
    if rank == 0:
        tmp.rename(final)  # atomic: the folder appears complete or not at all
    dist.barrier()
    return final


def _last_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[-1] if lines else type(err).__name__


# ---- load ---------------------------------------------------------------------------------------------------------
def latest(root: str | Path) -> Path | None:
    """The newest complete checkpoint under root (a step_* folder with meta.json), or None."""
    done = sorted(p for p in Path(root).glob("step_*") if (p / META).is_file())
    return done[-1] if done else None


def _check_files(path: Path):
    """meta.json and DCP's metadata readable, every data file present and long enough. Returns (meta, metadata)."""
    meta_path = path / META
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint {path} has no {META}: not a checkpoint, or a save that did not finish")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint file {meta_path} is corrupt ({err})") from None
    md_path = path / ".metadata"
    if not md_path.is_file():
        raise CheckpointError(f"checkpoint file {md_path} is missing (partial checkpoint)")
    try:
        metadata = dcp.FileSystemReader(path).read_metadata()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint file {md_path} is corrupt or truncated ({type(err).__name__})") from None
    ends: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for rel, end in sorted(ends.items()):
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {f} is missing (partial checkpoint)")
        if f.stat().st_size < end:
            raise CheckpointError(f"checkpoint file {f} is corrupt or truncated ({f.stat().st_size} of {end} bytes)")
    return meta, metadata


def load(path: str | Path, trainer: Trainer, balancer=None) -> dict:
    """Restore `trainer` (and balancer) from the checkpoint folder `path`, saved on any number of ranks and any
    parallelism of the same model. Returns the saved `extra` dict. Raises CheckpointError naming the file or key."""
    path = Path(path)
    meta, metadata = _check_files(path)
    mine = _model_meta(trainer)
    for key in sorted(set(meta["model"]) | set(mine)):
        if meta["model"].get(key) != mine.get(key):
            raise CheckpointError(f"checkpoint {path} is of another model: model.{key} = {meta['model'].get(key)} "
                                  f"there, {mine.get(key)} here")
    saved = metadata.state_dict_metadata
    optim = _Optim(trainer)
    with_moments = any(k.startswith("optim/") for k in saved)
    # Targets: fresh buffers shaped like this rank's rectangles (DCP reads into them), then copied into place.
    targets = {k: _blank(v) for k, v in _tensors(trainer, optim, False).items()}
    if with_moments:
        for k, v in list(targets.items()):
            for m in MOMENTS:
                targets[k.replace("experts/", "optim/", 1).replace("model/", "optim/", 1) + f"/{m}"] = _blank(v)
    missing = sorted(k for k in targets if k not in saved)
    if missing:
        raise CheckpointError(f"checkpoint {path} has no {missing[0]} (saved by a parallelism whose parameters are "
                              "named differently?)")
    rng_key = f"rng/{min(dist.get_rank(), meta['world_size'] - 1)}"
    blobs = {k: _Blob() for k in ("optim_step", "scheduler", "lrs", "trainer_step", "balancer", "extra", rng_key)}
    state = {**targets, **blobs}
    try:
        dcp.load(state, storage_reader=dcp.FileSystemReader(path))
    except (Exception, dcp.CheckpointException) as err:  # DCP wraps each rank's failure in CheckpointException
        raise CheckpointError(f"checkpoint {path} could not be read ({_last_line(err)})") from None
    state.update({k: b.value for k, b in blobs.items()})
    _apply(trainer, optim, state, with_moments)
    sched = trainer.engine.lr_scheduler
    if state["scheduler"] is not None and sched is not None:
        sched.load_state_dict(state["scheduler"])
    for group in optim.opt.param_groups:  # the schedule set them at its last step; every group shares one lr
        group["lr"] = state["lrs"][0]
    trainer.step_count = state["trainer_step"]
    trainer.engine.global_steps = state["trainer_step"]
    if balancer is not None and state["balancer"] is not None:
        balancer.load_state_dict(state["balancer"])
    set_rng_state(state[rng_key])
    return state["extra"]


def _blank(t):
    """A buffer of t's shape (a DTensor of the same placement for a DTensor)."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        return DTensor.from_local(torch.empty_like(t.to_local()), t.device_mesh, t.placements, run_check=False,
                                  shape=t.shape, stride=t.stride())
    return torch.empty_like(t)


def _local(t) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _apply(trainer: Trainer, optim: _Optim, state: dict, with_moments: bool) -> None:
    """Copy the loaded buffers into the parameters and the optimizer (collective under ZeRO/bf16: fixed order)."""
    if with_moments:
        optim.prepare(state["optim_step"])
    layers = _moe_layers(trainer.module)
    storage = {id(p) for s in layers.values() for p in s.params}
    for name, s in layers.items():
        for p, v in zip(s.params, s.unpack(_local(state[f"experts/{name}"]))):
            optim.set_master(p, v)
        if with_moments:
            for k in MOMENTS:
                for p, v in zip(s.params, s.unpack(_local(state[f"optim/{name}/{k}"]))):
                    optim.set(p, k, v)
    for name, p in trainer.module.named_parameters():
        if id(p) in storage:
            continue
        optim.set_master(p, state[f"model/{name}"])
        if with_moments:
            for k in MOMENTS:
                optim.set(p, k, state[f"optim/{name}/{k}"])
