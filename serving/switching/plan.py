"""The switch planner's decision: a frozen SwitchPlan of ordered transfers, and the options it is made under."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from fractions import Fraction

from serving.scheduler.plan import DeploymentPlan

STORAGE = -1  # Transfer.src of a load from storage


class TransferKind(str, Enum):
    weights = "weights"
    kv = "kv"


@dataclass(frozen=True)
class Shard:
    """A rectangle of the model: units [first_unit, end_unit) by the column fraction [col_lo, col_hi).

    Units: 0 the input embedding, 1..L the L transformer layers, L + 1 the LM head (see serving.switching.shards)."""

    first_unit: int
    end_unit: int  # exclusive
    col_lo: Fraction  # share of each unit's columns (heads, MLP neurons, vocabulary rows) where the slice starts
    col_hi: Fraction

    def contains(self, other: Shard) -> bool:
        return (self.first_unit <= other.first_unit and other.end_unit <= self.end_unit
                and self.col_lo <= other.col_lo and other.col_hi <= self.col_hi)

    def intersect(self, other: Shard) -> Shard | None:
        u0, u1 = max(self.first_unit, other.first_unit), min(self.end_unit, other.end_unit)
        c0, c1 = max(self.col_lo, other.col_lo), min(self.col_hi, other.col_hi)
        return Shard(u0, u1, c0, c1) if u0 < u1 and c0 < c1 else None


@dataclass(frozen=True)
class InflightRequest:
    id: int  # request id (the simulator's request index)
    replica: int  # index of its replica in the current DeploymentPlan
    context_tokens: int  # KV tokens it holds now (prompt + generated)
    remaining_tokens: int  # output tokens still to generate


@dataclass(frozen=True)
class Transfer:
    kind: TransferKind
    src: int  # source device id, or STORAGE
    dst: int  # destination device id
    nbytes: float
    start_s: float  # seconds after the switch begins
    end_s: float
    replica: int  # target replica index it builds (weights) or serves (kv)
    what: str  # e.g. "layers 0-39, columns [0, 1/2)" or "kv of request 17: layers 0-79, columns [0, 1/4)"
    shard: Shard | None = None  # the rectangle of the model (weights) or of the request's KV (kv) it carries
    request: int | None = None  # the request whose KV it carries (kv only)


@dataclass(frozen=True)
class KVAction:
    request: int
    move: bool  # False: drains on its source replica; True: its KV moves to dst_replica
    src_replica: int  # index in the current plan
    dst_replica: int | None  # index in the target plan (None when it drains)
    ready_s: float  # when it can continue on dst (moves) / 0.0 (drains)
    buffer_tokens: int = 0  # KV tokens reserved for it on dst: context * (1 + kv_headroom), rounded up (moves)


# Not frozen: the Hydra schema nests this class, and OmegaConf makes a frozen dataclass read-only (no overrides).
@dataclass
class SwitchOptions:
    storage_bw: float | None = None  # bytes/s a node reads from storage (None: the cluster's figure)
    kv_move_min_tokens: int = 512  # requests with fewer context tokens drain instead of moving
    kv_headroom: float = 0.15  # KV buffers sized with 10-20% headroom
    # KV-cache tokens one target replica holds; None: the roofline's memory model (weights, activations, reserve).
    kv_capacity_tokens: int | None = None
    # Seconds a rebuilt replica spends re-initialising after its last shard lands (new NCCL groups, CUDA graphs).
    # 0: the transfers alone.
    rebuild_s: float = 0.0
    # Seconds vLLM takes to start an engine beside reading the weights (cold_reload_s only). vLLM issue #19824
    # (Llama-70B, TP8, H100): ~15 s Dynamo bytecode transform + ~60 s CUDA graph capture, with a warm torch.compile
    # cache (its ~70 s compile skipped) and VLLM_SKIP_P2P_CHECK=1 (its ~60 s P2P check skipped).
    engine_startup_s: float = 75.0

    def __post_init__(self):
        if self.storage_bw is not None and not self.storage_bw > 0:
            raise ValueError(f"SwitchOptions.storage_bw must be > 0 bytes/s, got {self.storage_bw}")
        if self.kv_move_min_tokens < 0:
            raise ValueError(f"SwitchOptions.kv_move_min_tokens must be >= 0, got {self.kv_move_min_tokens}")
        if self.kv_headroom < 0:
            raise ValueError(f"SwitchOptions.kv_headroom must be >= 0, got {self.kv_headroom}")
        if self.kv_capacity_tokens is not None and self.kv_capacity_tokens < 0:
            raise ValueError(f"SwitchOptions.kv_capacity_tokens must be >= 0, got {self.kv_capacity_tokens}")
        for key in ("rebuild_s", "engine_startup_s"):
            if getattr(self, key) < 0:
                raise ValueError(f"SwitchOptions.{key} must be >= 0, got {getattr(self, key)}")


@dataclass(frozen=True)
class SwitchPlan:
    target: DeploymentPlan  # the target, its replicas re-mapped onto devices to reuse what is in place
    transfers: tuple[Transfer, ...]  # ordered by start time
    kv: tuple[KVAction, ...]  # one per in-flight request of a replica that does not survive
    replica_ready_s: tuple[float, ...]  # [K_target] when each target replica can serve (0.0: kept unchanged)
    kept: tuple[int, ...]  # target replica indices kept as they are (same config on the same devices)
    removed: tuple[int, ...]  # current replica indices that stop
    total_s: float  # when the last transfer ends
    weight_bytes: float
    kv_bytes: float
    kept_from: tuple[int, ...] = ()  # [len(kept)] the current replica index each kept target replica continues
    in_place_bytes: float = 0.0  # weight bytes the target needs that already sit on the right device

    @property
    def ready_s(self) -> float:
        """When the whole target serves: its last replica ready (0.0 when every replica is kept)."""
        return max(self.replica_ready_s, default=0.0)
