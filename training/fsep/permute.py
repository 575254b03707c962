"""Row permutations with a gather backward: the token reorderings of dispatch and combine.

Notation: T tokens, k routes per token (token-major: route r is token r // k), H hidden.
`x.index_select(0, perm)` has a scatter backward: it zero-fills a fresh [rows, H] gradient and index_adds into it.
When the index is a permutation (or a permutation of routes over tokens repeated k times) its inverse is known,
so the backward is one more gather (plus a sum over each token's k copies): no zero fill, no scatter.
"""

from __future__ import annotations

import torch


class PermuteRows(torch.autograd.Function):
    """out[i] = x[perm[i] // k]; perm [T*k] a permutation of routes, inv its inverse, x [T, H] (k=1: a permutation
    of x's rows). Backward: the route-order gradient is grad[inv]; token t's gradient sums its k routes."""

    @staticmethod
    def forward(ctx, x, perm, inv, k: int):
        ctx.save_for_backward(inv)
        ctx.k = k
        return x.index_select(0, perm // k if k > 1 else perm)

    @staticmethod
    def backward(ctx, grad):
        (inv,) = ctx.saved_tensors
        g = grad.index_select(0, inv)
        if ctx.k > 1:
            g = g.view(-1, ctx.k, *g.shape[1:]).sum(1)
        return g, None, None, None


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device, dtype=perm.dtype)
    return inv


def permute_rows(x: torch.Tensor, perm: torch.Tensor, inv: torch.Tensor, k: int = 1) -> torch.Tensor:
    """x[perm // k] with a gather backward (see PermuteRows); inv = inverse_permutation(perm)."""
    return PermuteRows.apply(x, perm, inv, k)
