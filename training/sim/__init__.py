"""The training simulator: iteration time of an MoE model on a cluster per system, from the real planners, the real
routing rule and `common.costmodel`'s collectives (`simulate_iteration`)."""

from training.sim.calibration import DEFAULT_EFFICIENCY, PAPER, Calibration, default_compute, profile_compute
from training.sim.costs import (
    Bytes,
    LayerCosts,
    NonExpert,
    attention_time,
    dense_flops_per_token,
    dense_params,
    layer_costs,
)
from training.sim.loads import trace_loads
from training.sim.simulate import Breakdown, SimResult, simulate_iteration
from training.sim.systems import SYSTEMS, DenseComm, ExpertComm, Prefetch, System, SystemName, get_system

__all__ = [
    "DEFAULT_EFFICIENCY", "PAPER", "SYSTEMS", "Breakdown", "Bytes", "Calibration", "DenseComm", "ExpertComm",
    "LayerCosts", "NonExpert", "Prefetch", "SimResult", "System", "SystemName", "attention_time", "default_compute",
    "dense_flops_per_token", "dense_params", "get_system", "layer_costs",
    "profile_compute", "simulate_iteration", "trace_loads",
]
