"""The LAER-MoE planner's objective: 4 * sum_i T_comm[i] + (3 [+1 with recompute]) * max_i T_comp[i].

Notation: N devices, E experts, G devices per node.
T_comm[i] = bytes device i sends to other devices / bandwidth of each link (intra- or inter-node), the dispatch of one
all-to-all; the factor 4 counts dispatch and combine in forward and backward. T_comp[i] = per-token expert time x tokens
computed on i; forward plus a backward twice as long gives 3 (4 when activations are recomputed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.costmodel import ComputeModel, swiglu_expert_flops
from common.topology import ClusterSpec, a100_80g_4x8
from training.planner import kernels


@dataclass(frozen=True)
class PlanObjective:
    """Numbers the planner objective needs; build one with `PlanObjective.for_model`."""

    token_bytes: float  # bytes of one token's hidden state on the wire (2 * H for bf16)
    per_token_s: float  # forward time of one token through one expert
    intra_bw: float  # bytes/s between two devices of a node
    inter_bw: float  # bytes/s between devices of different nodes
    recompute: bool = False  # activations recomputed in backward: one more forward of compute

    def __post_init__(self):
        for key in ("token_bytes", "per_token_s", "intra_bw", "inter_bw"):
            v = getattr(self, key)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"PlanObjective.{key} must be finite and > 0, got {v}")

    @classmethod
    def for_model(
        cls, cluster: ClusterSpec | None = None, hidden: int = 4096, ffn: int = 14336, recompute: bool = False,
        compute: ComputeModel | None = None, tokens_per_kernel: int = 4096,
    ) -> PlanObjective:
        """Token bytes 2*H (bf16); per-token time of a SwiGLU expert at the size of a typical expert kernel."""
        cluster = cluster or a100_80g_4x8()
        compute = compute or ComputeModel(cluster.device.peak_flops)
        per_token = compute.time(swiglu_expert_flops(tokens_per_kernel, hidden, ffn, backward=False)) / tokens_per_kernel
        return cls(2.0 * hidden, per_token, cluster.intra_bw, cluster.inter_bw, recompute)

    @property
    def compute_factor(self) -> float:
        return 4.0 if self.recompute else 3.0

    def objective(self, device_tokens: np.ndarray, sent_intra: np.ndarray, sent_inter: np.ndarray) -> float:
        """The objective of one plan's traffic ([N] each)."""
        return float(self.objectives(*(np.asarray(x)[None] for x in (device_tokens, sent_intra, sent_inter)))[0])

    def objectives(self, device_tokens: np.ndarray, sent_intra: np.ndarray, sent_inter: np.ndarray) -> np.ndarray:
        """The objective of several plans' traffic, [T, N] arrays each: [T] (compiled, `kernels.objectives`)."""
        params = np.array([self.token_bytes, self.intra_bw, self.inter_bw, self.compute_factor * self.per_token_s])
        return kernels.objectives(device_tokens, sent_intra, sent_inter, params)

    def expected_margin(self, spread_tokens, num_devices: int, slots_per_device: int, objective):
        """Bound on |exact objective - expected objective| of a layout (spread: `training.routing.fsep_expected`): device
        tokens differ by less than spread_tokens; a source keeps within own replicas' count of the split, so the
        tokens sent inside nodes differ by at most N*C in all; inter-node tokens are the same. Plus a 1e-9 relative
        slack for the floating-point sums. Scalars or [T] arrays."""
        return (self.compute_factor * self.per_token_s * spread_tokens
                + 4.0 * self.token_bytes * num_devices * slots_per_device / self.intra_bw + 1e-9 * np.abs(objective))
