"""Where the simulator's hardware numbers come from.

Generic (any cluster):
- Peak FLOP/s and HBM bandwidth: the device preset (`common.topology.A100_80G`: 312 TFLOP/s dense bf16, 2.039 TB/s,
  NVIDIA A100 80GB SXM datasheet).
- Bandwidths: the preset (`a100_80g_4x8`: 216.269 / 88.9539 GB/s, what the LAER-MoE paper's planner measured).
- Compute efficiency: DEFAULT_EFFICIENCY of peak for every kernel when no profile is given, or the achieved/peak
  curve of a profile written by `python -m common.profiling` (`ComputeModel.from_profile`), moved onto the target
  device's peak by `profile_compute`.

The LAER-MoE paper's runs (`PAPER`, used by every simulated paper figure through experiments.laer_paper):
- Node NICs: the artifact (github.com/Fizzmy/LAER-MoE-AE, README "Hardware dependencies") gives 800 Gbps inter-node
  per node, and its Megatron launch script lists four HCAs per node (NCCL_IB_HCA=mlx5_0..mlx5_3) for 8 GPUs: 4 x
  HDR-200 = 100 GB/s per node. The planner's own measurement, 88.9539 GB/s (Hetu-Galvatron laer-moe
  galvatron/models/moe/configs/network_config.json), is 89% of that node total, not a per-GPU figure (one HDR-200
  NIC carries 25 GB/s). So a node's 8 GPUs share 88.9539 GB/s for their all-to-all traffic
  (`ClusterSpec.node_inter_bw`); rings keep it per ring crossing (`common.topology`).
- Activation recompute: the LAER-MoE / FSDP / FlexMoE runs set CHECKPOINT=1 -> `--global_checkpoint 1` (Galvatron
  galvatron/models/moe/scripts/train.sh); the Megatron baseline's script passes no --recompute flag.
- Megatron's layout: the artifact's LAER-MoE/scripts_ae/e2e.sh runs every model at expert_parallel=8 (with
  tensor_parallel 8 for the e8k2 models, 4 for e16k4; micro-batch 1): EP groups of 8 devices, E/8 experts each,
  repeated over the data-parallel groups. Its tensor parallelism (and the activation collectives that come with it)
  is not simulated.
- Flash attention (the runs pass --use-flash-attn, flash-attn 2.5.8): FlashAttention-2 (Dao, 2023) reaches about
  63% of A100 peak forward and 53% backward for causal head-dim-128 attention at long sequences; its backward does
  2.5x the forward's FLOPs where the simulator counts 2x, so over forward, recompute and backward the simulator's
  FLOPs run at 4 / (2/0.63 + 2 * 2.5/2 / 0.53) ~ 0.5 of peak: ATTENTION_EFFICIENCY. A public figure, not fitted.
- GEMM efficiency and memory-bound bytes per token: FITTED (two parameters, nothing else) on one model's breakdown
  (mixtral-8x7b-e8k2 in breakdown_analysis_backup.csv: per-rank all-to-all / expert / total seconds of FSDP, FLEX,
  LAER), by `experiments.sim_validate` (`sim_validate.refit=true` reruns the fit). The fit's and the held-out errors
  (mixtral-8x7b-e16k4's breakdown, the 96 end-to-end settings) are printed by that experiment. Physical priors:
  cuBLAS bf16 GEMMs of these sizes reach 70-85% of A100 peak; norms, rotary, SwiGLU, router and token permutation of
  a Mixtral layer move roughly 0.3-0.5 MB per token per forward (elementwise reads + writes of H- and F-wide rows).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from common.costmodel import ComputeModel
from common.topology import GB, ClusterSpec
from training.sim.costs import NonExpert
from training.sim.systems import SystemName

# Fraction of peak a large bf16 GEMM reaches on an A100. 0.6 is ComputeModel's own default; it sits between the 52%
# of peak Megatron-LM reports end to end for GPT at scale (Narayanan et al., SC'21: 163 of 312 TFLOP/s, which
# includes everything that is not a GEMM) and the ~70-80% cuBLAS reaches on large square GEMMs. An assumption, not a
# measurement: replace it by a profile when a GPU is available.
DEFAULT_EFFICIENCY = 0.6

PAPER_NODE_INTER_BW = 88.9539 * GB  # bytes/s a node's four HDR-200 NICs carry together (module docstring)
ATTENTION_EFFICIENCY = 0.5  # flash attention's score kernels over forward, recompute and backward (module docstring)


@dataclass(frozen=True)
class Calibration:
    """What the simulator assumes about a set of runs beyond the cluster preset and the model."""

    gemm_efficiency: float  # fraction of device peak of expert, projection and LM-head GEMMs
    non_expert: NonExpert  # flash attention's efficiency and memory-bound bytes per token per layer
    node_inter_bw: float | None  # ClusterSpec.node_inter_bw to apply (None: the preset's)
    recompute: frozenset[SystemName]  # systems that run with full activation recompute
    ep_degree: int | None = None  # Megatron EP's expert-parallel group size (simulate_iteration's ep_degree)

    def cluster(self, cluster: ClusterSpec) -> ClusterSpec:
        return cluster if self.node_inter_bw is None else replace(cluster, node_inter_bw=self.node_inter_bw)

    def compute(self, cluster: ClusterSpec) -> ComputeModel:
        return default_compute(cluster, self.gemm_efficiency)


# FITTED on mixtral-8x7b-e8k2's breakdown (module docstring; `python -m experiments.run experiment=laer/sim_validate
# sim_validate.refit=true` reproduces them from 5 trace samples: 0.7545, 3.200e6; refitted after FlexMoE's layout came
# to persist across iterations, as the artifact's does: 0.794 / 3.29e6 before). The efficiency is inside its
# physical range (cuBLAS 70-85%). The bytes are 7-10x what a Mixtral layer's memory-bound kernels move (0.3-0.5 MB
# per token per forward): about 6 of the paper's ~9-11 s per iteration outside all-to-all and expert compute are not
# identified by any modelled term (host synchronisation, kernel gaps, unhidden collectives are candidates) and this
# parameter carries them, scaled like memory-bound work (per token, per layer, per pass).
PAPER_GEMM_EFFICIENCY = 0.7545
PAPER_ELEMENTWISE_BYTES = 3.200e6

PAPER = Calibration(
    gemm_efficiency=PAPER_GEMM_EFFICIENCY,
    non_expert=NonExpert(attention_efficiency=ATTENTION_EFFICIENCY, elementwise_bytes=PAPER_ELEMENTWISE_BYTES),
    node_inter_bw=PAPER_NODE_INTER_BW,
    recompute=frozenset({SystemName.fsdp_ep, SystemName.flexmoe, SystemName.laer, SystemName.laer_plus}),
    ep_degree=8,
)


def default_compute(cluster: ClusterSpec, efficiency: float = DEFAULT_EFFICIENCY) -> ComputeModel:
    """Constant efficiency of the cluster's device peak."""
    if not 0 < efficiency <= 1:
        raise ValueError(f"efficiency must be in (0, 1], got {efficiency}")
    return ComputeModel(cluster.device.peak_flops, default_efficiency=efficiency)


def profile_compute(path: str | Path, cluster: ClusterSpec | None = None, threads: int | None = None) -> ComputeModel:
    """The profile's achieved-FLOP/s curve; with `cluster`, its achieved/peak ratios moved onto that device's peak
    (a CPU profile then says only how efficiency falls off for small kernels, at the CPU's kernel sizes). threads:
    the CPU threads one simulated device computes with, when it differs from the profile's (`device.threads`); its
    FLOP/s scale linearly with them (an assumption: GEMMs on this machine's cores share nothing but memory)."""
    measured = ComputeModel.from_profile(path)
    if threads is not None:
        import json

        try:
            profiled = int(json.loads(Path(path).read_text())["device"]["threads"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"profile {path}: threads={threads} needs the profile's device.threads") from None
        k = threads / profiled
        measured = ComputeModel(measured.peak_flops * k, measured.flops_points,
                                tuple(a * k for a in measured.achieved_points))
    if cluster is None:
        return measured
    scale = cluster.device.peak_flops / measured.peak_flops
    return ComputeModel(cluster.device.peak_flops, measured.flops_points,
                        tuple(a * scale for a in measured.achieved_points))
