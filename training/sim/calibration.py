"""Where the simulator's hardware numbers come from.

- Peak FLOP/s: the device preset (`common.topology.A100_80G`: 312 TFLOP/s dense bf16, NVIDIA A100 datasheet).
- Bandwidths: the preset (`a100_80g_4x8`: 216.269 / 88.9539 GB/s, what the LAER-MoE paper's planner measured).
- Compute efficiency: DEFAULT_EFFICIENCY of peak for every kernel when no profile is given, or the achieved/peak
  curve of a profile written by `python -m common.profiling` (`ComputeModel.from_profile`), moved onto the target
  device's peak by `profile_compute`.
"""

from __future__ import annotations

from pathlib import Path

from common.costmodel import ComputeModel
from common.topology import ClusterSpec

# Fraction of peak a large bf16 GEMM reaches on an A100. 0.6 is ComputeModel's own default; it sits between the 52%
# of peak Megatron-LM reports end to end for GPT at scale (Narayanan et al., SC'21: 163 of 312 TFLOP/s, which
# includes everything that is not a GEMM) and the ~70-80% cuBLAS reaches on large square GEMMs. An assumption, not a
# measurement: replace it by a profile when a GPU is available.
DEFAULT_EFFICIENCY = 0.6


def default_compute(cluster: ClusterSpec, efficiency: float = DEFAULT_EFFICIENCY) -> ComputeModel:
    """Constant efficiency of the cluster's device peak."""
    if not 0 < efficiency <= 1:
        raise ValueError(f"efficiency must be in (0, 1], got {efficiency}")
    return ComputeModel(cluster.device.peak_flops, default_efficiency=efficiency)


def profile_compute(path: str | Path, cluster: ClusterSpec | None = None) -> ComputeModel:
    """The profile's achieved-FLOP/s curve; with `cluster`, its achieved/peak ratios moved onto that device's peak
    (a CPU profile then says only how efficiency falls off for small kernels, at the CPU's kernel sizes)."""
    measured = ComputeModel.from_profile(path)
    if cluster is None:
        return measured
    scale = cluster.device.peak_flops / measured.peak_flops
    return ComputeModel(cluster.device.peak_flops, measured.flops_points,
                        tuple(a * scale for a in measured.achieved_points))
