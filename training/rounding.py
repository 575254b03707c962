"""Largest-remainder rounding: real shares to integer counts with a given total, the one rule every integer split uses
(routing quotas, proportional routing, trace rows scaled to a batch)."""

from __future__ import annotations

import numpy as np
import torch

# Shares such as load * w / sum(w) land a few ulps below an integer; without the slack the floor loses that token and
# the largest-remainder step has to hand it back, which can then go elsewhere on ties.
FLOOR_SLACK = 1e-9


def largest_remainder(shares, totals):
    """Integer counts along the last axis of `shares` that sum to `totals`, each the floor of its share or one more.

    shares: [..., M] non-negative reals; totals: [...] integers (or a scalar for 1-D shares), about shares.sum(-1).
    numpy arrays or torch tensors (the runtime's routing split runs it on its device with no host sync); one body
    over either library's ops, so host callers keep numpy's speed on small arrays (torch's per-op overhead measured
    1.3-4x slower there).
    1. Floor every share (with FLOOR_SLACK).
    2. The `totals - sum of floors` shares with the largest fractional parts get one more (ties: lower index).
    Returns int64 with the shape of shares.
    """
    if isinstance(shares, torch.Tensor):
        floor, rint = torch.floor, torch.round

        def argsort(a):
            return torch.argsort(a, dim=-1, stable=True)

        def to_int(a):
            return a.long()
    else:
        shares, totals = np.asarray(shares, dtype=np.float64), np.asarray(totals)
        floor, rint = np.floor, np.rint

        def argsort(a):
            return np.argsort(a, axis=-1, kind="stable")

        def to_int(a):
            return a.astype(np.int64)
    floors = floor(shares + FLOOR_SLACK)  # Step 1
    short = to_int(rint(totals - floors.sum(-1)))  # [...] tokens still to hand out (sums of integers: exact)
    rank = argsort(argsort(floors - shares))  # Step 2
    return to_int(floors + (rank < short[..., None]))
