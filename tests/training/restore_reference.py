"""The plain restore the product's restore (`training.fsep.restore.RestoreWeights`) is checked against (see fsep_cases.case_restore_*).

Notation: N devices, E experts, C slots per device, P elements of one expert, S = ceil(P/N) shard width.
Restore as a [C, P] tensor: one all-to-all in, trim; backward pads, cuts into N pieces and sends piece s back to
device s, which sums the pieces of all replicas of an expert. No views, no fused gradient layout.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class RestoreExperts(torch.autograd.Function):
    """forward: shard [E, S] -> restored [C, P]. backward: [C, P] gradient -> [E, S] shard gradient."""

    @staticmethod
    def forward(ctx, shard, slots, num_elements: int, group):
        n, c = slots.shape
        send = shard.detach().index_select(0, slots.reshape(-1))  # [N*C, S]: device r's slots' pieces, r-major
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=group)
        ctx.save_for_backward(slots)
        ctx.num_experts, ctx.num_elements, ctx.group = shard.shape[0], num_elements, group
        return recv.view(n, c, -1).permute(1, 0, 2).reshape(c, -1)[:, :num_elements]

    @staticmethod
    def backward(ctx, grad):
        (slots,) = ctx.saved_tensors
        n, c = slots.shape
        width = -(-ctx.num_elements // n)
        padded = grad.new_zeros(c, n * width)
        padded[:, : ctx.num_elements] = grad
        send = padded.view(c, n, width).permute(1, 0, 2).contiguous()  # [N, C, S]: piece d goes to device d
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=ctx.group)
        g = grad.new_zeros(ctx.num_experts, width)
        for r in range(n):  # a plain loop over (device, slot): the shard gradient sums every replica's piece
            for s in range(c):
                g[slots[r, s]] += recv[r, s]
        return g, None, None, None


def restore_experts(shard, slots, num_elements, group) -> torch.Tensor:
    return RestoreExperts.apply(shard, slots, num_elements, group)
