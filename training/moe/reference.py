"""The plain single-process MoE layer: router + SwiGLU experts (Mixtral layout). The FSEP runtime must equal it.

Notation: T tokens, H hidden, F expert FFN size, E experts, k routes per token.
Expert j: w1[j], w3[j] [F, H]; w2[j] [H, F]; y = w2 (silu(w1 x) * (w3 x)).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.moe.gating import combine_weights, replay_assignment, route_topk, switch_aux_loss


def swiglu(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """One SwiGLU expert on x [T, H] -> [T, H]."""
    return (nn.functional.silu(x @ w1.t()) * (x @ w3.t())) @ w2.t()


class Router(nn.Module):
    """Linear router H -> E without bias. `forward(x, target_counts=None)` returns (idx [T, k], weights [T, k], aux).
    With target_counts [E] it is the trace-replay gate: the assignment reproduces the counts exactly and the weights
    are still the router's probabilities of the assigned experts, so gradients reach the router as usual."""

    def __init__(self, hidden: int, num_experts: int, top_k: int):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        self.top_k = top_k
        self.weight = nn.Parameter(torch.empty(num_experts, hidden))
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(hidden))

    def forward(self, x: torch.Tensor, target_counts: torch.Tensor | None = None):
        logits = x @ self.weight.t()  # [T, E]
        if target_counts is None:
            idx, w, probs = route_topk(logits, self.top_k)
        else:
            probs = torch.softmax(logits.float(), dim=-1)
            idx = replay_assignment(target_counts, x.shape[0], self.top_k).to(x.device)
            w = combine_weights(probs, idx)
        return idx, w.to(x.dtype), switch_aux_loss(probs, idx)


class ReferenceMoE(nn.Module):
    """Single-process MoE: every expert local, every token computed, nothing dropped."""

    def __init__(self, hidden: int, ffn: int, num_experts: int, top_k: int):
        super().__init__()
        self.hidden, self.ffn, self.num_experts, self.top_k = hidden, ffn, num_experts, top_k
        self.router = Router(hidden, num_experts, top_k)
        self.w1 = nn.Parameter(torch.randn(num_experts, ffn, hidden) / math.sqrt(hidden))  # [E, F, H]
        self.w3 = nn.Parameter(torch.randn(num_experts, ffn, hidden) / math.sqrt(hidden))  # [E, F, H]
        self.w2 = nn.Parameter(torch.randn(num_experts, hidden, ffn) / math.sqrt(ffn))  # [E, H, F]

    def forward(self, x: torch.Tensor, target_counts: torch.Tensor | None = None):
        """x [..., H] -> (y [..., H], aux_loss)."""
        shape = x.shape
        x = x.reshape(-1, self.hidden)
        idx, w, aux = self.router(x, target_counts)
        y = torch.zeros_like(x)
        for j in range(self.num_experts):
            tok, choice = (idx == j).nonzero(as_tuple=True)
            if tok.numel():
                out = swiglu(x[tok], self.w1[j], self.w3[j], self.w2[j]) * w[tok, choice, None]
                y = y.index_add(0, tok, out)
        return y.reshape(shape), aux
