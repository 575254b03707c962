"""Typed configs of the training loop's parts (trainer, data, planner in the loop, parallelism). No torch import, so
the Hydra schema (experiments/config.py) nests these very classes without loading the training stack.

Plain (not frozen) dataclasses: OmegaConf makes a frozen dataclass read-only, which would reject command-line
overrides; the library treats them as read-only values all the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional  # OmegaConf wants typing.Optional, not `X | None`


class Parallel(Enum):
    """How the MoE layers are distributed over the N ranks (training.fsep.apply)."""

    fsep = "fsep"  # FSEP storage, layout re-planned every step by the planner
    fsdp_ep = "fsdp_ep"  # FSEP storage with the static FSDP+EP layout
    ep = "ep"  # expert parallel, E/N whole experts per rank, dropless
    deepspeed_ep = "deepspeed_ep"  # DeepSpeed-MoE's own layer (deepspeed.moe.layer.MoE), dropless


class Precision(Enum):
    fp32 = "fp32"
    bf16 = "bf16"


class LRSchedule(Enum):
    constant = "constant"  # lr throughout
    warmup_cosine = "warmup_cosine"  # linear warm-up over warmup_steps, then cosine down to lr * min_lr_ratio


@dataclass
class TrainerConfig:
    # ---- length and batch ----
    # Optimizer steps.
    steps: int = 200
    # Micro-batches per optimizer step (gradient accumulation M).
    micro_batches: int = 1
    # ---- optimizer (AdamW) ----
    lr: float = 3e-3
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    # ---- schedule ----
    schedule: LRSchedule = LRSchedule.warmup_cosine
    warmup_steps: int = 10
    # Final learning rate of the cosine as a fraction of lr.
    min_lr_ratio: float = 0.1
    # ---- numerics ----
    # Clip the global gradient norm to this (0: no clipping).
    grad_clip: float = 1.0
    precision: Precision = Precision.fp32
    # ZeRO stage for the dense parameters: 0 (plain data parallel), 1 (optimizer state) or 2 (+ gradients) sharded.
    zero_stage: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.micro_batches < 1:
            raise ValueError(f"trainer.steps and trainer.micro_batches must be >= 1, got {self.steps}, "
                             f"{self.micro_batches}")
        if self.zero_stage not in (0, 1, 2):
            raise ValueError(f"trainer.zero_stage must be 0, 1 or 2 (ZeRO-3 would shard the expert storage too), "
                             f"got {self.zero_stage}")


@dataclass
class DataConfig:
    # Folder of text files (every *.py and *.txt below it); null: this Python's standard library source.
    corpus_dir: Optional[str] = None  # noqa: UP045
    # Use at most this many files, spread evenly over the sorted list (null: all).
    max_files: Optional[int] = 400  # noqa: UP045
    # BPE vocabulary (must not exceed model.vocab_size).
    vocab_size: int = 4096
    # Tokens per sequence S.
    seq_len: int = 128
    # Sequences per global micro-batch G over all ranks (divisible by the rank count).
    global_batch: int = 8
    # Where the trained tokenizer and token stream are cached (null: <repo>/data/cache).
    cache_dir: Optional[str] = None  # noqa: UP045
    # Seed of the epoch permutations.
    seed: int = 0


@dataclass
class PlannerConfig:
    # Registry name (training.planner.PLANNERS) of the planner that lays the FSEP layers out (parallel=fsep).
    name: str = "laer_plus"
    # Plan each layer from the sum of its last `window` micro-batches (the LAER-MoE paper's W = 5).
    window: int = 5
    # true: a step waits for the previous step's plans (a fixed one-step lag, bit-reproducible runs and resumes);
    # false: a plan not finished at the step's end is taken at a later step (no wait; the lag varies with timing).
    wait: bool = True
