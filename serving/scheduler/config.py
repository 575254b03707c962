"""The scheduler's settings: one small typed config (nested as is into the experiments' Hydra schema)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from serving.scheduler.dispatch import TieBreak


class Capacity(Enum):
    """Where n_kj (requests/s one replica sustains on one type) comes from. Member names are lower case because
    OmegaConf matches a config value to the member's name."""

    analytic = "analytic"  # costmodel.type_capacity: the continuous-batching formula on the type's mean lengths
    # a CapacityProfiler passed to Problem (e.g. serving.sim.profile.SimulatedProfiler, which replays the type's
    # own requests on one replica, as a deployment would profile its engines offline); the analytic value is its guess
    simulated = "simulated"


# Not frozen: the Hydra schema nests this class, and OmegaConf makes a frozen dataclass read-only (no overrides).
@dataclass
class SchedulerConfig:
    # The replicas' prefill token budget (enters the capacity estimate).
    max_batched_tokens: int = 8192
    # Stop after this many upper-level search steps without improvement.
    patience: int = 20
    # Hard cap on search steps.
    max_steps: int = 500
    # Final dispatch among equal-rate solutions: latency (least sum l x, toward faster replicas up to `headroom`
    # load) or balance (least peak utilisation).
    tie_break: TieBreak = TieBreak.latency
    # Utilisation up to which the latency tie-break may load fast replicas (0: keep the least peak utilisation, so
    # latency only breaks ties among equally balanced dispatches).
    headroom: float = 0.0
    # Time per output token the capacity estimate keeps to (prefill stalls included); null: saturation throughput.
    # 0.07 ~ a 0.2 s TPOT SLO / 3: the simulated P99 TPOT runs about twice the median, so planning at a third keeps
    # the tail inside the SLO.
    tpot_target_s: float | None = 0.07
    # n_kj from the analytic formula or from a profiler passed to Problem (simulated).
    capacity: Capacity = Capacity.analytic
    # Deployments with the best flow/LP scores that a plan scorer passed to Problem (e.g. a short simulated replay)
    # then ranks; 0 or no scorer: the LP's best is the plan.
    finalists: int = 4
