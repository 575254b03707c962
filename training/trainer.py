"""The trainer: a (transformed) MoEDecoder on the DeepSpeed engine, with the expert-load planner in the loop.

Notation: N data-parallel ranks (= the FSEP/EP group), M micro-batches per step (gradient accumulation), B sequences
per rank and micro-batch, S tokens per sequence.

What DeepSpeed must be told about expert storage. `deepspeed.initialize` broadcasts every parameter from rank 0 and
averages every gradient over the N ranks, except for parameters it knows as expert parameters (`allreduce = False`
with a `group_name`, DeepSpeed's MoE convention). Those it broadcasts and all-reduces only inside their expert
data-parallel group, then divides by N. An FSEP shard (each rank a different piece of every expert) or an EP rank's
own experts are expert parameters with expert-parallel size N, so their expert data-parallel group is the rank alone:
no broadcast (each rank keeps its piece), no all-reduce (the gradient scatter already summed the replicas), and the
division by N that turns the summed per-rank losses into their mean, as for the dense parameters. DeepSpeed applies
this only when the module holds a `deepspeed.moe.layer.MoE` (it decides `has_moe_layers` by isinstance), hence the
parameter-less `_ExpertGroup` declared beside the model.

Gradient clipping under ZeRO stage 0 is done here, not by DeepSpeed: DeepSpeed averages the per-rank norms, which is
not the norm of the full gradient once experts are sharded. Here the norm is sqrt(dense^2 + sum over ranks of each
rank's expert^2), the single-process norm. Under ZeRO 1/2 DeepSpeed's own (partitioned) clipping runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from training.fsep.layer import DistributedMoE
from training.loads import LoadBalancer, StepLoads
from training.train_config import LRSchedule, Precision, TrainerConfig


def ds_config(cfg: TrainerConfig, micro_batch_size: int, world_size: int) -> dict:
    """The DeepSpeed config of a TrainerConfig (micro_batch_size: sequences per rank and micro-batch)."""
    out = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": cfg.micro_batches,
        "train_batch_size": micro_batch_size * cfg.micro_batches * world_size,
        # torch's AdamW: DeepSpeed's fused Adam needs a compiled op (and a GPU); the maths is the same.
        "optimizer": {"type": "AdamW", "params": {"lr": cfg.lr, "betas": [cfg.beta1, cfg.beta2], "eps": cfg.eps,
                                                  "weight_decay": cfg.weight_decay, "torch_adam": True}},
        "gradient_clipping": cfg.grad_clip if cfg.zero_stage > 0 else 0.0,  # stage 0: Trainer.clip (module doc)
        "bf16": {"enabled": cfg.precision is Precision.bf16},
        "zero_optimization": {"stage": cfg.zero_stage},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if cfg.schedule is LRSchedule.warmup_cosine:
        out["scheduler"] = {"type": "WarmupCosineLR", "params": {
            "total_num_steps": cfg.steps, "warmup_num_steps": cfg.warmup_steps, "warmup_type": "linear",
            "warmup_min_ratio": 0.0, "cos_min_ratio": cfg.min_lr_ratio}}
    return out


def expert_group_name(world_size: int) -> str:
    """DeepSpeed's name of the expert-parallel groups of size N (deepspeed.utils.groups)."""
    return f"ep_size_{world_size}"


def declare_expert_params(model: nn.Module, world_size: int) -> list[nn.Parameter]:
    """Mark the storage of every DistributedMoE layer (all its parameters but the router's) as DeepSpeed expert
    parameters of expert-parallel size N. Returns them. The router stays dense: every rank holds all of it."""
    marked = []
    for layer in (m for m in model.modules() if isinstance(m, DistributedMoE)):
        for name, p in layer.named_parameters():
            if not name.startswith("router."):
                p.allreduce, p.group_name = False, expert_group_name(world_size)
                marked.append(p)
    return marked


def is_expert_param(p: torch.Tensor) -> bool:
    """DeepSpeed's test (deepspeed.moe.utils.is_moe_param), without importing deepspeed."""
    return getattr(p, "allreduce", True) is False


def _expert_group(world_size: int) -> nn.Module:
    """A parameter-less `deepspeed.moe.layer.MoE` that makes the engine treat expert parameters as such (module doc)
    and creates DeepSpeed's expert groups of size N when the engine asks it to."""
    from deepspeed.moe.layer import MoE
    from deepspeed.utils import groups

    class _ExpertGroup(MoE):
        def __init__(self):
            nn.Module.__init__(self)  # not MoE.__init__: no gate, no experts, nothing to broadcast
            self.ep_size, self.num_experts, self.num_local_experts = world_size, world_size, 1
            self.expert_group_name = expert_group_name(world_size)

        def set_deepspeed_parallelism(self, use_data_before_expert_parallel_: bool = False):
            if self.expert_group_name not in groups._get_expert_parallel_group_dict():
                groups._create_expert_and_data_parallel(self.ep_size, use_data_before_expert_parallel_=False)

        def forward(self, *args):
            raise RuntimeError("_ExpertGroup only declares expert parameters to DeepSpeed; it has no forward")

    return _ExpertGroup()


def _leave_deepspeed_groups(model: nn.Module) -> None:
    """DeepSpeed-MoE layers built before the engine (training.fsep.deepspeed_ep joins its groups at construction, so
    it runs without one) are joined again by `deepspeed.initialize`, and DeepSpeed's gate refuses a second group.
    Clear it: the engine sets the same group (same name, same ranks) right away."""
    from deepspeed.moe.sharded_moe import MOELayer

    for m in model.modules():
        if isinstance(m, MOELayer):
            m.ep_group = None
            m.gate.ep_group = None


class _TrainModule(nn.Module):
    """What the engine wraps: the model, its loss, and the expert-group declaration."""

    def __init__(self, model: nn.Module, loss_fn: Callable, world_size: int):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn
        self.expert_group = _expert_group(world_size)

    def forward(self, tokens, target_counts=None):
        out = self.model(tokens, target_counts)
        lm = self.loss_fn(out.logits, tokens)
        return lm + out.aux_loss, lm.detach(), out.aux_loss.detach()


@dataclass(frozen=True)
class StepMetrics:
    """One optimizer step, averaged over the step's micro-batches and the ranks."""

    step: int  # 0-based optimizer step just taken
    loss: float  # language-model loss (mean next-token cross-entropy)
    aux_loss: float  # load-balancing loss as added to it (coefficient included)
    lr: float  # learning rate used by this step
    grad_norm: float  # global gradient norm before clipping (nan where DeepSpeed clips)
    step_s: float  # wall-clock seconds of the step on this rank
    step_cpu_s: float  # CPU seconds of this rank's process in the step (wall time is distorted on a shared machine)
    tokens_per_s: float  # tokens of the global batch / step_s
    loads: StepLoads | None  # expert loads, device tokens and planner timings (None: no distributed MoE layer)


def device_for(local_rank: int) -> torch.device:
    """cuda:local_rank when CUDA is available, else the CPU (the backend follows: NCCL or gloo)."""
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


class Trainer:
    """`step(micro_batches)` runs one optimizer step on the DeepSpeed engine.

    model: a MoEDecoder, already transformed (`training.fsep.apply`) where N > 1; loss_fn(logits, tokens).
    balancer: records expert loads and keeps layouts planned (None: no distributed MoE layer, e.g. N = 1)."""

    def __init__(self, model: nn.Module, cfg: TrainerConfig, micro_batch_size: int, loss_fn: Callable,
                 balancer: LoadBalancer | None = None):
        import deepspeed

        self.cfg, self.balancer = cfg, balancer
        self.world_size = dist.get_world_size()
        deepspeed.init_distributed(dist_backend=dist.get_backend(), verbose=False)
        self.expert_params = declare_expert_params(model, self.world_size)
        _leave_deepspeed_groups(model)
        self.module = _TrainModule(model, loss_fn, self.world_size)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.module, model_parameters=list(self.module.parameters()),
            config=ds_config(cfg, micro_batch_size, self.world_size))
        self.device = next(self.module.parameters()).device
        self.step_count = 0

    @property
    def model(self) -> nn.Module:
        return self.module.model

    def clip(self) -> float:
        """Clip every gradient by the global norm (module doc); returns the norm before clipping (communicates: one
        all_reduce of the expert parameters' squared norm)."""
        dense = torch.zeros((), device=self.device)
        expert = torch.zeros((), device=self.device)
        for p in self.module.parameters():
            if p.grad is not None:
                sq = p.grad.detach().float().pow(2).sum()
                if is_expert_param(p):
                    expert += sq
                else:
                    dense += sq
        dist.all_reduce(expert)
        norm = float((dense + expert).sqrt())
        if self.cfg.grad_clip > 0 and norm > self.cfg.grad_clip:
            scale = self.cfg.grad_clip / (norm + 1e-6)
            for p in self.module.parameters():
                if p.grad is not None:
                    p.grad.mul_(scale)
        return norm

    def step(self, micro_batches) -> StepMetrics:
        """One optimizer step over M micro-batches, each (tokens [B, S], target_counts list[Tensor] or None)."""
        if len(micro_batches) != self.cfg.micro_batches:
            raise ValueError(f"step got {len(micro_batches)} micro-batches, trainer.micro_batches is "
                             f"{self.cfg.micro_batches}")
        t0, c0 = time.perf_counter(), time.process_time()
        lr = self.engine.get_lr()[0]
        sums = torch.zeros(2, device=self.device)
        grad_norm, tokens = float("nan"), 0
        for tokens_mb, targets in micro_batches:
            tokens_mb = tokens_mb.to(self.device)
            loss, lm, aux = self.engine(tokens_mb, targets)
            self.engine.backward(loss)
            if self.balancer is not None:
                self.balancer.record()
            if self.engine.is_gradient_accumulation_boundary() and self.cfg.zero_stage == 0:
                grad_norm = self.clip()
            self.engine.step()
            sums += torch.stack([lm.float(), aux.float()])
            tokens += tokens_mb.numel()
        loads = self.balancer.end_step(self.step_count) if self.balancer is not None else None
        dist.all_reduce(sums)
        sums = (sums / (self.world_size * len(micro_batches))).tolist()
        step_s = time.perf_counter() - t0
        metrics = StepMetrics(self.step_count, sums[0], sums[1], lr, grad_norm, step_s, time.process_time() - c0,
                              tokens * self.world_size / step_s, loads)
        self.step_count += 1
        return metrics


def rng_state() -> dict:
    """This process's RNG states (torch CPU, CUDA where present, numpy)."""
    out = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
