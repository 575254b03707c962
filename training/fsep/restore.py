"""Restore: [E, S] expert shards -> the full experts of this device's slots, and its backward (the gradient scatter),
as one autograd op.

Notation: N devices, E experts, C slots per device, P elements of one expert, S = ceil(P/N) shard width.
Device d permanently holds piece d (elements d*S .. (d+1)*S - 1 of the zero-padded flat expert) of every expert.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class PendingRestore:
    """A restore all-to-all already in flight (started by `start_restore`), so the forward can overlap it."""

    work: object  # the async collective handle
    recv: torch.Tensor  # [N, C, S] buffer it fills: pieces from every source device for each of my slots


def start_restore(shard: torch.Tensor, slots: torch.Tensor, group) -> PendingRestore:
    """Launch the restore all-to-all without waiting: device d sends to each device r, for each slot c of r,
    its piece of expert slots[r, c]."""
    n, c = slots.shape
    send = shard.detach().index_select(0, slots.reshape(-1))  # [N*C, S] ordered by destination device
    recv = torch.empty_like(send)
    work = dist.all_to_all_single(recv, send, group=group, async_op=True)
    return PendingRestore(work, recv.view(n, c, -1))


class RestoreSlotWeights(torch.autograd.Function):
    """forward: shard [E, S] -> every slot's weight matrices (views of the restored [C, N*S] buffer, `parts` shapes
    in flat order, e.g. w1 [F, H], w3 [F, H], w2 [H, F]); slot-major, len(parts) outputs per slot.
    backward: their gradients -> [E, S] shard gradient (the gradient scatter).

    1. Forward: one all_to_all_single (equal splits, C*S elements per peer); piece s of slot c arrives from device s,
       so the full expert is the concatenation over sources (trimmed to P by the views).
    2. Backward: write each matrix's gradient straight into the [N, C, S] send layout of the gradient all-to-all (one
       copy, where a [C, P] output's gradient would be assembled by a split/unbind backward and then permuted into
       that layout: three), then `scatter_gradients`.
    """

    @staticmethod
    def forward(ctx, shard, slots, parts: tuple, group, pending: PendingRestore | None):
        n, c = slots.shape
        num_elements = sum(a * b for a, b in parts)
        if pending is None:
            pending = start_restore(shard, slots, group)
        pending.work.wait()
        ctx.save_for_backward(slots)
        ctx.num_experts, ctx.num_elements, ctx.parts, ctx.group = shard.shape[0], num_elements, parts, group
        ctx.dtype, ctx.device = shard.dtype, shard.device
        ctx.set_materialize_grads(False)  # an unused slot (a merged duplicate) gets None, written as zeros below
        full = pending.recv.permute(1, 0, 2).reshape(c, -1)  # [C, N*S]
        outs = []
        for row in full.unbind(0):
            off = 0
            for a, b in parts:
                outs.append(row[off:off + a * b].view(a, b))
                off += a * b
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        (slots,) = ctx.saved_tensors
        n, c = slots.shape
        width = -(-ctx.num_elements // n)
        send = torch.empty(n, c, width, dtype=ctx.dtype, device=ctx.device)  # piece d of every slot goes to device d
        it = iter(grads)
        for slot in range(c):
            off = 0
            for a, b in ctx.parts:
                g = next(it)
                _write_pieces(send[:, slot], off, None if g is None else g.reshape(-1), a * b)
                off += a * b
            _write_pieces(send[:, slot], off, None, n * width - off)  # padding
        return scatter_gradients(send, slots, ctx.num_experts, ctx.group), None, None, None, None


def scatter_gradients(send: torch.Tensor, slots: torch.Tensor, num_experts: int, group) -> torch.Tensor:
    """The gradient scatter (communicates: one all_to_all_single). send [N, C, S]: piece d of the gradient of each of
    my slots, bound for device d. Device s receives, from every device r and slot c, the gradient of its piece of
    expert slots[r, c] and sums the pieces of all replicas of an expert into its [E, S] shard gradient (index_add over
    the slot -> expert map)."""
    n, c, width = send.shape
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    g = send.new_zeros(num_experts, width)
    g.index_add_(0, slots.reshape(-1), recv.view(n * c, width))
    return g


def _write_pieces(dst: torch.Tensor, offset: int, flat: torch.Tensor | None, length: int) -> None:
    """Write flat elements offset .. offset+length-1 of one slot's padded expert (zeros when flat is None) into dst
    [N, S], that slot's N pieces."""
    width = dst.shape[1]
    for d in range(offset // width, (offset + length - 1) // width + 1) if length > 0 else ():
        lo, hi = max(offset, d * width), min(offset + length, (d + 1) * width)
        piece = dst[d, lo - d * width:hi - d * width]
        if flat is None:
            piece.zero_()
        else:
            piece.copy_(flat[lo - offset:hi - offset])


def restore_slot_weights(shard, slots, parts, group, pending=None) -> tuple[torch.Tensor, ...]:
    return RestoreSlotWeights.apply(shard, slots, tuple(parts), group, pending)
