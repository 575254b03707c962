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
    numpy in, numpy out; torch tensors stay on their device (the runtime's routing split calls it with no host sync).
    1. Floor every share (with FLOOR_SLACK).
    2. The `totals - sum of floors` shares with the largest fractional parts get one more (ties: lower index).
    Returns int64 with the shape of shares.
    """
    if not isinstance(shares, torch.Tensor):
        shares = torch.from_numpy(np.ascontiguousarray(shares, dtype=np.float64))
        return largest_remainder(shares, torch.as_tensor(np.asarray(totals))).numpy()
    floors = torch.floor(shares + FLOOR_SLACK)  # Step 1
    short = torch.round(totals - floors.sum(-1)).long()  # [...] tokens still to hand out (sums of integers: exact)
    rank = torch.argsort(torch.argsort(floors - shares, dim=-1, stable=True), dim=-1, stable=True)  # Step 2
    return (floors + (rank < short.unsqueeze(-1))).long()
