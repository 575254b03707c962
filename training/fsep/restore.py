"""Restore: [E, S] expert shards -> the full experts of this device's slots, and its backward (the gradient scatter),
as one autograd op; the communication of both as separate launch / finish steps, so a scheduler can overlap them.

Notation: N devices, E experts, C slots per device, U_r <= C distinct experts of device r (U on this device),
P elements of one expert, S = ceil(P/N) shard width.
Device d permanently holds piece d (elements d*S .. (d+1)*S - 1 of the zero-padded flat expert) of every expert.
Each device restores its distinct experts once: a duplicate replica on one device shares its first copy's row.

Precision: the shard (master weights) keeps its dtype (fp32); the restore sends and returns `dtype` (bf16 for bf16
compute, cast from the shard on the sender, so the wire carries half the bytes); the gradient all-to-all carries the
gradients' dtype; the sum over replicas into the shard gradient is done in fp32 (never coarser than the shard).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from training.fsep.layout import LayerLayout


@dataclass
class PendingRestore:
    """A restore all-to-all in flight (`start_restore`)."""

    work: object  # the async collective handle
    recv: torch.Tensor  # [N, U, S] buffer it fills: piece s of each of my distinct experts, from device s


def start_restore(shard: torch.Tensor, layout: LayerLayout, rank: int, group, dtype: torch.dtype) -> PendingRestore:
    """Launch the restore all-to-all without waiting (communicates): device d sends to each device r its piece of each
    of r's distinct experts, cast to `dtype`."""
    counts = layout.restored_counts
    n, width = len(counts), shard.shape[1]
    send = shard.detach().index_select(0, layout.restored).to(dtype)  # [sum_r U_r, S], by destination device
    recv = torch.empty(n * counts[rank], width, dtype=dtype, device=shard.device)
    work = dist.all_to_all_single(recv, send, [counts[rank]] * n, list(counts), group=group, async_op=True)
    return PendingRestore(work, recv.view(n, counts[rank], width))


def assemble(pending: PendingRestore, out: torch.Tensor) -> None:
    """Wait for the restore and lay its pieces out as whole experts: out [U, N*S] (written through `.data`, so views
    autograd saved of `out` keep their version and see the new values)."""
    pending.work.wait()
    n, u, width = pending.recv.shape
    out.data.view(u, n, width).copy_(pending.recv.transpose(0, 1))


def expert_views(full: torch.Tensor, parts) -> tuple[torch.Tensor, ...]:
    """full [U, >= P] -> per part of `parts` (flat order, e.g. w1 [F, H], w3 [F, H], w2 [H, F]) the stacked [U, a, b]
    view (columns beyond P are padding). split rather than slicing: on a parameter its backward is one cat, where
    every slice's backward would allocate and zero-fill a whole [U, P] gradient."""
    sizes = [a * b for a, b in parts]
    pad = full.shape[1] - sum(sizes)
    pieces = full.split(sizes + [pad] if pad else sizes, 1)
    return tuple(m.view(-1, a, b) for m, (a, b) in zip(pieces, parts))


class RestoreWeights(torch.autograd.Function):
    """forward: (w1 [U, F, H], w3 [U, F, H], w2 [U, H, F]), views of `restored.buffer()` ([U, N*S], what `restored`
    assembled from its restore all-to-all); `grad_input` is the shard [E, S], or a placeholder when the gradient is
    deferred. backward: their gradients -> the gradient scatter, which `restored.scatter_gradients` runs now
    (returns the [E, S] shard gradient) or defers (returns None; the schedule accumulates it into the shard later).

    `restored` is the forward's restore state (training.fsep.schedule.RestoredExperts): layout, buffer, lifecycle."""

    @staticmethod
    def forward(ctx, grad_input, restored, parts: tuple):
        ctx.restored, ctx.parts = restored, parts
        ctx.set_materialize_grads(False)  # a part nothing used gets None, written as zeros
        return expert_views(restored.buffer(), parts)

    @staticmethod
    def backward(ctx, *grads):
        restored = ctx.restored
        send = gradient_send_buffer(grads, ctx.parts, restored.num_devices, restored.shard_width)
        return restored.scatter_gradients(send), None, None


def gradient_send_buffer(grads, parts, n: int, width: int) -> torch.Tensor:
    """Gradients of the restored parts ([U, a, b] each, None for zero) -> [N, U, S]: piece d of every restored
    expert's gradient, bound for device d. One copy: each part is written straight into its pieces."""
    like = next(g for g in grads if g is not None)
    u = like.shape[0]
    send = torch.empty(n, u, width, dtype=like.dtype, device=like.device)
    by_row = send.transpose(0, 1)  # [U, N, S] view
    off = 0
    for (a, b), g in zip(parts, grads):
        _write_pieces(by_row, off, None if g is None else g.reshape(u, -1), a * b)
        off += a * b
    _write_pieces(by_row, off, None, n * width - off)  # padding
    return send


def _write_pieces(dst: torch.Tensor, offset: int, flat: torch.Tensor | None, length: int) -> None:
    """Write flat elements offset .. offset+length-1 of every row's padded expert (zeros when flat is None) into dst
    [U, N, S], each row's N pieces; flat [U, length]."""
    width = dst.shape[2]
    for d in range(offset // width, (offset + length - 1) // width + 1) if length > 0 else ():
        lo, hi = max(offset, d * width), min(offset + length, (d + 1) * width)
        piece = dst[:, d, lo - d * width:hi - d * width]
        if flat is None:
            piece.zero_()
        else:
            piece.copy_(flat[:, lo - offset:hi - offset])


@dataclass
class PendingGradient:
    """A gradient all-to-all in flight (`start_gradient_scatter`); `finish` sums it into the shard gradient."""

    work: object  # the async collective handle
    recv: torch.Tensor  # [sum_r U_r, S]: from every device r, the gradient of my piece of each of r's experts
    index: torch.Tensor  # [sum_r U_r] the expert of each received row (LayerLayout.restored)
    num_experts: int

    def finish(self, dtype: torch.dtype) -> torch.Tensor:
        """Wait; the [E, S] shard gradient: the pieces of all replicas of an expert summed in fp32 (then `dtype`)."""
        self.work.wait()
        acc = torch.promote_types(dtype, torch.float32)
        g = torch.zeros(self.num_experts, self.recv.shape[1], dtype=acc, device=self.recv.device)
        g.index_add_(0, self.index, self.recv.to(acc))
        return g.to(dtype)


def start_gradient_scatter(send: torch.Tensor, layout: LayerLayout, rank: int, num_experts: int,
                           group) -> PendingGradient:
    """The gradient scatter's all-to-all, launched without waiting (communicates). send [N, U, S]: piece d of the
    gradient of each of my restored experts, bound for device d. Device s receives from every device r the gradient
    of its piece of each of r's distinct experts."""
    n, u, width = send.shape
    counts = list(layout.restored_counts)
    recv = send.new_empty(sum(counts), width)
    work = dist.all_to_all_single(recv, send.view(n * u, width), counts, [u] * n, group=group, async_op=True)
    return PendingGradient(work, recv, layout.restored, num_experts)
