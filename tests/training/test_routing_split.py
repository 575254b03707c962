"""The vectorised routing split (`split_counts`, what the runtime runs on its device) against the per-expert loop it
replaced (tests/training/routing_reference.py), bit for bit, on random layouts: replicas (two on one device too), node
shapes, zero counts, experts without tokens, planner fractions with ties and all-zero rows. The reference rounds with
largest_remainder on numpy arrays, the rule on torch tensors: the check covers both of its backends."""

from __future__ import annotations

import numpy as np
import torch

from tests.training.routing_reference import (
    reference_fsep_routing,
    reference_split_row,
    reference_split_row_by_weights,
)
from training.placement import Placement
from training.routing import fsep_routing, slot_shares, split_counts, split_row, split_row_by_weights


def random_case(rng):
    g = int(rng.choice([1, 2, 4]))
    n = g * int(rng.integers(1, 4))
    c = int(rng.integers(1, 5))
    e = int(rng.integers(1, n * c + 1))
    slots = rng.integers(0, e, (n, c))
    slots.ravel()[rng.permutation(n * c)[:e]] = np.arange(e)  # every expert placed
    loads = rng.integers(0, 40, (n, e)) * (rng.random((n, e)) < 0.7)  # zero counts
    if rng.random() < 0.2:
        loads[:] = 0
    return Placement(slots, e), loads, g


def random_fractions(rng, placement, n, e):
    held = placement.holders() > 0  # [E, N]
    kind = rng.integers(3)
    if kind == 0:
        w = rng.random((n, e, n))
    elif kind == 1:
        w = rng.integers(0, 3, (n, e, n)).astype(float)  # equal weights: largest-remainder ties, zero rows
    else:
        w = np.ones((n, e, n)) / 3  # thirds: shares that land a few ulps off an integer
    return w * held[None]


def test_fsep_rule_equals_reference_loop():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p, loads, g = random_case(rng)
        n = p.num_devices
        np.testing.assert_array_equal(fsep_routing(loads, p, g), reference_fsep_routing(loads, p, g))
        for i in range(n):
            np.testing.assert_array_equal(split_row(loads[i], p, i, g), reference_split_row(loads[i], p, i, g))
        # all source rows in one call (what fsep_routing runs) equal one row at a time (what a device runs)
        many = split_counts(torch.from_numpy(loads), slot_shares(p, np.arange(n), g))
        for i in range(n):
            one = split_counts(torch.from_numpy(loads[i:i + 1]), slot_shares(p, [i], g))
            assert torch.equal(many[i:i + 1], one)


def test_planner_fractions_equal_reference_loop():
    rng = np.random.default_rng(1)
    for _ in range(200):
        p, loads, _ = random_case(rng)
        n, e = p.num_devices, p.num_experts
        w = random_fractions(rng, p, n, e)
        for i in range(n):
            got = split_row_by_weights(loads[i], w[i], p, i)
            np.testing.assert_array_equal(got, reference_split_row_by_weights(loads[i], w[i], p, i))
            assert np.array_equal(np.bincount(p.slots.ravel(), got.ravel(), minlength=e), loads[i])
        many = split_counts(torch.from_numpy(loads), slot_shares(p, np.arange(n), 1, w))
        for i in range(n):
            assert many[i].tolist() == split_row_by_weights(loads[i], w[i], p, i).ravel().tolist()
