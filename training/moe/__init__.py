"""Single-process MoE building blocks: router, trace-replay gate, SwiGLU experts, the reference layer."""

from training.moe.gating import replay_assignment, route_topk, scale_counts, switch_aux_loss
from training.moe.reference import ReferenceMoE, Router, swiglu

__all__ = ["ReferenceMoE", "Router", "replay_assignment", "route_topk", "scale_counts", "swiglu", "switch_aux_loss"]
