"""Hugging Face adapter: the parallelism transforms (`training.fsep.apply`) accept `transformers`' Mixtral, so a
researcher can FSEP-shard the model they already use. Each `MixtralSparseMoeBlock` becomes an `HFMoEBlock`: the
distributed layer holding the block's weights, behind the block's own forward contract.

Written against transformers 5.x, where the block is `gate` (MixtralTopKRouter, weight [E, H]) + `experts`
(MixtralExperts: gate_up_proj [E, 2F, H] = w1 rows then w3 rows, down_proj [E, H, F] = w2), its forward maps
hidden_states [B, S, H] -> [B, S, H], and the model collects router logits with a forward hook on every
MixtralTopKRouter (output index 0) when output_router_logits is set. Notation as training.moe.reference.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import SiLUActivation
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock, MixtralTopKRouter

from training.moe.reference import ReferenceMoE


class RouterLogitsTap(MixtralTopKRouter):
    """Parameter-free stand-in for the block's router, there only to be seen: `forward(logits)` returns
    (logits, None, None) as MixtralTopKRouter does, so the model's router-logit recorder (it hooks modules of that
    class) still collects every layer's [T, E] logits and MixtralForCausalLM's load-balancing loss still works."""

    def __init__(self):
        nn.Module.__init__(self)  # not MixtralTopKRouter's: no weight of its own

    def forward(self, logits: torch.Tensor):
        return logits, None, None


class HFMoEBlock(nn.Module):
    """A distributed MoE layer (`moe`: forward (x, target_counts=None) -> (y, aux)) behind MixtralSparseMoeBlock's
    forward: hidden_states [B, S, H] -> [B, S, H]. The layer's own aux loss is dropped: the HF model computes its
    load-balancing loss from the recorded router logits instead."""

    def __init__(self, moe: nn.Module, jitter_noise: float = 0.0):
        super().__init__()
        self.moe = moe
        self.jitter_noise = jitter_noise  # MixtralSparseMoeBlock's input jitter in training mode (0: none)
        self.gate = RouterLogitsTap()

    def router_weight(self) -> torch.Tensor:
        """[E, H] router weight of the wrapped layer (FSEP/EP layers: `router`; DeepSpeed-MoE: its gate's `wg`)."""
        if hasattr(self.moe, "router"):
            return self.moe.router.weight
        return self.moe.moe.deepspeed_moe.gate.wg.weight

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.training and self.jitter_noise > 0:
            noise = torch.empty_like(hidden_states).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
            hidden_states = hidden_states * noise
        # The logits are recomputed here (T*H*E multiply-adds, small beside the experts' 3*k*T*F*H) because the
        # layer's router keeps its own; same weight, so the recorded logits are exactly the routing logits.
        self.gate(F.linear(hidden_states.reshape(-1, hidden_states.shape[-1]), self.router_weight()))
        y, _ = self.moe(hidden_states)
        return y


def reference_view(block: MixtralSparseMoeBlock) -> ReferenceMoE:
    """A ReferenceMoE whose parameters are views of the HF block's tensors (nothing copied or allocated)."""
    experts = block.experts
    if not isinstance(experts.act_fn, (SiLUActivation, nn.SiLU)):
        raise ValueError(f"only SwiGLU experts (hidden_act silu) convert, got {type(experts.act_fn).__name__}")
    if block.top_k < 2:
        # HF renormalises a single choice to weight 1; the FSEP router keeps the Switch probability (gating.py).
        raise ValueError("a Mixtral block with num_experts_per_tok = 1 has no FSEP equivalent (top-1 weights differ)")
    e, f, h = experts.num_experts, experts.intermediate_dim, experts.hidden_dim
    with torch.device("meta"):
        ref = ReferenceMoE(h, f, e, block.top_k)
    ref.router.weight = block.gate.weight
    ref.w1 = nn.Parameter(experts.gate_up_proj[:, :f], requires_grad=False)  # [E, F, H]
    ref.w3 = nn.Parameter(experts.gate_up_proj[:, f:], requires_grad=False)  # [E, F, H]
    ref.w2 = nn.Parameter(experts.down_proj, requires_grad=False)  # [E, H, F]
    return ref


def hook_new_blocks(model: nn.Module) -> None:
    """transformers installs its output-recording hooks once, at the first forward that records anything; a model
    converted after that has taps without hooks, and its router logits would silently go missing. Hook those taps
    the same way (the router_logits recorder: output index 0)."""
    from transformers.utils.output_capturing import install_output_capuring_hook

    for owner in model.modules():
        if getattr(owner, "_output_capturing_hooks_installed", False):
            for tap in owner.modules():
                if isinstance(tap, RouterLogitsTap) and not tap._forward_hooks:
                    install_output_capuring_hook(tap, "router_logits", 0)


def convert_block(block: nn.Module, build: Callable[[ReferenceMoE], nn.Module]) -> HFMoEBlock | None:
    """HFMoEBlock around build(the block's weights) if `block` is a MixtralSparseMoeBlock, else None."""
    if not isinstance(block, MixtralSparseMoeBlock):
        return None
    layer = build(reference_view(block))
    return HFMoEBlock(layer, block.jitter_noise).to(block.gate.weight.dtype)
