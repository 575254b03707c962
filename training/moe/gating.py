"""Routing decisions: top-k from router logits, and the trace-replay gate that reproduces given per-expert counts.

Notation: T tokens, E experts, k routes per token. Routes are token-major: route r belongs to token r // k.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from training.rounding import largest_remainder


def combine_weights(probs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """[T, k] combine weights of the chosen experts. k = 1: the router probability (Switch; a renormalised top-1
    weight would be 1 and give the router no gradient); k > 1: renormalised over the k choices (Mixtral, GShard).
    The same convention as DeepSpeed's top-1/top-2 gates, so the baseline can match the reference exactly."""
    w = probs.gather(1, idx)
    if idx.shape[1] > 1:
        w = w / w.sum(1, keepdim=True).clamp_min(torch.finfo(w.dtype).eps)
    return w


def route_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [T, E] -> (idx [T, k] int64, weights [T, k], probs [T, E])."""
    probs = F.softmax(logits.float(), dim=-1)
    idx = probs.topk(k, dim=-1).indices
    return idx, combine_weights(probs, idx), probs


def replay_assignment(target_counts: torch.Tensor | np.ndarray, num_tokens: int, k: int) -> torch.Tensor:
    """The trace-replay gate's assignment: [T, k] expert ids whose per-expert route counts equal target_counts exactly.

    target_counts: [E] non-negative integers summing to T*k, each at most T (a token takes k distinct experts).
    Fill the T x k table column by column (choice-major) with expert ids in order of decreasing count; an expert's
    run of at most T consecutive cells never covers one token twice, so every token gets k distinct experts.
    Deterministic: it depends only on the counts.
    """
    # Host data (a trace row): a tensor on a GPU would cost a sync here.
    c = np.asarray(target_counts.cpu() if isinstance(target_counts, torch.Tensor) else target_counts, dtype=np.int64)
    if c.ndim != 1 or np.any(c < 0):
        raise ValueError(f"target_counts must be a non-negative [E] vector, got shape {c.shape}")
    if c.sum() != num_tokens * k:
        raise ValueError(f"target_counts sum to {int(c.sum())}, expected T*k = {num_tokens}*{k} = {num_tokens * k}")
    if c.max(initial=0) > num_tokens:
        raise ValueError(f"target count {int(c.max())} exceeds T = {num_tokens}: a token cannot take one expert twice")
    order = np.argsort(-c, kind="stable")
    seq = np.repeat(order, c[order])  # [T*k] choice-major: cell p is token p % T, choice p // T
    return torch.from_numpy(seq.reshape(k, num_tokens).T.copy())


def scale_counts(row: np.ndarray, total: int, cap: int) -> np.ndarray:
    """Scale a trace row [E] of counts to sum exactly `total` with no entry above `cap` (largest remainder rounding;
    overflow above cap moves to the experts with the most room, largest first). Used to replay a trace at another
    batch size."""
    row = np.asarray(row, dtype=np.float64)
    if row.sum() <= 0:
        raise ValueError("trace row has no tokens")
    if cap * row.size < total:
        raise ValueError(f"cannot place {total} routes on {row.size} experts with at most {cap} each")
    ideal = row * total / row.sum()
    out = largest_remainder(ideal, total)
    excess = int(np.maximum(out - cap, 0).sum())
    out = np.minimum(out, cap)
    while excess:
        room = cap - out
        j = int(np.argmax(room))
        add = min(excess, int(room[j]))
        out[j] += add
        excess -= add
    return out


def route_counts(idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """[E] int64 routes per expert of idx [T, k], on idx's device. scatter_add rather than bincount: on CUDA bincount
    reads its input's max back to the host (a sync)."""
    flat = idx.reshape(-1)
    return torch.zeros(num_experts, dtype=torch.int64, device=idx.device).scatter_add_(0, flat, torch.ones_like(flat))


def switch_aux_loss(probs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer load-balancing loss E * sum_j f_j * P_j over this device's tokens:
    f_j fraction of routes to expert j (no gradient), P_j mean router probability of j.
    A device with no tokens contributes 0 with zero gradient (not 0/0: a NaN would poison the router gradient that
    every device's all-reduce sums)."""
    t, e = probs.shape
    f = route_counts(idx, e).to(probs.dtype) / max(idx.numel(), 1)
    return e * (f * (probs.sum(0) / max(t, 1))).sum()
