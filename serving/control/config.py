"""The controller's settings: one small typed config (nested as is into the experiments' Hydra schema)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class PlannerKind(str, Enum):
    """Which deployments the controller plans on a forecast. Lower-case names: OmegaConf matches a config value to
    the member's name."""

    oserve = "oserve"  # the two-level spatial search (heterogeneous replicas)
    homogeneous = "homogeneous"  # the best deployment of identical replicas (vLLM's kind)


class SwitchMode(str, Enum):
    """How a decided switch is carried out."""

    fast = "fast"  # the switch planner: reuse weights in place, copy shards over NVLink/IB, move long requests' KV
    reload = "reload"  # cold reload: every replica restarts from storage, serving nothing until it is loaded
    none = "none"  # never switch (the initial deployment is kept)


# Not frozen: the Hydra schema nests this class, and OmegaConf makes a frozen dataclass read-only (no overrides).
@dataclass
class ControllerConfig:
    # Seconds between decisions; also the predictor's bin width (one forecast per interval).
    interval_s: float = 30.0
    # Seconds the predicted gain of a switch is counted over (the forecast is taken to hold that long).
    horizon_s: float = 120.0
    # Switch when the predicted gain exceeds margin x the switching cost (both in request-seconds of waiting):
    # 1 is the break-even rule; more than 1 asks for a safety factor against forecast error.
    margin: float = 1.0
    # ... and exceeds this share of the deployment in place's expected waiting: plans closer than that are within
    # the forecast's noise and the cost model's error, and a switch between them would chase noise.
    min_gain: float = 0.2
    # ... on each of the forecasts made from the last `confirm` histories (now, one interval ago, ...): one interval's
    # Poisson noise can make a target look better once, rarely twice in a row (a debounce; 1: the latest only).
    confirm: int = 2
    # Which deployments are planned on the forecast.
    planner: PlannerKind = PlannerKind.oserve
    # How a switch is carried out (none: the initial plan is kept).
    switching: SwitchMode = SwitchMode.fast
    # Re-solve the dispatch of the deployment in place on every forecast (free: no weights move).
    redispatch: bool = True
    # Utilisation above which the waiting-time estimate counts a replica as saturated (1 / (1 - u) capped there).
    max_utilisation: float = 0.95
