"""Largest-remainder rounding: real shares to integer counts with a given total, the one rule every integer split uses
(routing quotas, proportional routing, trace rows scaled to a batch)."""

from __future__ import annotations

import numpy as np

# Shares such as load * w / sum(w) land a few ulps below an integer; without the slack the floor loses that token and
# the largest-remainder step has to hand it back, which can then go elsewhere on ties.
FLOOR_SLACK = 1e-9


def largest_remainder(shares: np.ndarray, totals) -> np.ndarray:
    """Integer counts along the last axis of `shares` that sum to `totals`, each the floor of its share or one more.

    shares: [..., M] non-negative reals; totals: [...] integers (or a scalar for 1-D shares), about shares.sum(-1).
    1. Floor every share (with FLOOR_SLACK).
    2. The `totals - sum of floors` shares with the largest fractional parts get one more (ties: lower index).
    Returns int64 with the shape of shares.
    """
    shares = np.asarray(shares, dtype=np.float64)
    floors = np.floor(shares + FLOOR_SLACK)
    short = np.rint(np.asarray(totals) - floors.sum(-1)).astype(np.int64)  # [...] tokens still to hand out
    rank = np.argsort(np.argsort(floors - shares, axis=-1, kind="stable"), axis=-1, kind="stable")
    return (floors + (rank < short[..., None])).astype(np.int64)
