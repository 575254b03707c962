"""Token all-to-all with uneven splits as an autograd op: the backward sends gradients back the reverse way."""

from __future__ import annotations

import torch
import torch.distributed as dist


class AllToAllTokens(torch.autograd.Function):
    """x [sum(in_splits), H] -> [sum(out_splits), H]: rows in_splits[d] go to device d (in order),
    rows out_splits[s] arrive from device s."""

    @staticmethod
    def forward(ctx, x, out_splits: list[int], in_splits: list[int], group):
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits),) + tuple(x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        g = grad.new_empty((sum(in_splits),) + tuple(grad.shape[1:]))
        dist.all_to_all_single(g, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return g, None, None, None


def all_to_all_tokens(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
    return AllToAllTokens.apply(x, out_splits, in_splits, group)
