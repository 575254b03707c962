"""Single-process checks of the reference layer, the trace-replay gate and the per-row routing split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.moe import ReferenceMoE, replay_assignment, scale_counts, swiglu
from training.placement import Placement
from training.routing import fsep_routing, split_row, split_row_by_weights


def test_one_expert_moe_is_a_dense_swiglu():
    torch.manual_seed(0)
    ref = ReferenceMoE(8, 16, 1, 1)
    x = torch.randn(5, 8)
    y, _ = ref(x)
    torch.testing.assert_close(y, swiglu(x, ref.w1[0], ref.w3[0], ref.w2[0]))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_replay_assignment_matches_counts_with_distinct_experts(k):
    rng = np.random.default_rng(k)
    for _ in range(50):
        t, e = int(rng.integers(1, 40)), int(rng.integers(k, 12))
        counts = scale_counts(rng.random(e) ** 4 + (rng.random(e) < 0.3) * 0, t * k, t)
        idx = replay_assignment(counts, t, k)
        assert idx.shape == (t, k)
        assert np.array_equal(np.bincount(idx.numpy().ravel(), minlength=e), counts)
        assert all(len(set(row)) == k for row in idx.tolist())


def test_replay_gate_errors_are_clear():
    with pytest.raises(ValueError, match="sum to 5"):
        replay_assignment(np.array([3, 2]), 4, 2)
    with pytest.raises(ValueError, match="exceeds T"):
        replay_assignment(np.array([5, 3]), 4, 2)


def test_replay_gate_router_gradient_is_the_softmax_gradient():
    torch.manual_seed(1)
    ref = ReferenceMoE(6, 8, 5, 2)
    x = torch.randn(7, 6)
    target = torch.tensor([7, 0, 4, 3, 0])
    idx, w, _ = ref.router(x, target)
    assert torch.equal(torch.bincount(idx.reshape(-1), minlength=5), target)
    coef = torch.randn(7, 2)
    (w * coef).sum().backward()
    # Hand-written: w = p_a / (p_a + p_b) of softmax(x W^T) at the assigned experts.
    wr = ref.router.weight.detach().clone().requires_grad_(True)
    p = torch.softmax(x @ wr.t(), -1).gather(1, idx)
    ((p / p.sum(1, keepdim=True)) * coef).sum().backward()
    torch.testing.assert_close(ref.router.weight.grad, wr.grad)
    assert wr.grad.norm() > 0


def test_scale_counts_exact_total_and_cap():
    rng = np.random.default_rng(0)
    for _ in range(100):
        e = int(rng.integers(2, 33))
        row = rng.integers(0, 2048, e) * (rng.random(e) < 0.7)
        row[0] += 1
        t = int(rng.integers(e, 500))
        k = int(rng.integers(1, min(e, 3) + 1))
        out = scale_counts(row, t * k, t)
        assert out.sum() == t * k and out.max() <= t and out.min() >= 0


def test_split_row_is_fsep_routing_row():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n, e, c = 4, int(rng.integers(2, 9)), 3
        slots = rng.integers(0, e, (n, c))
        slots.ravel()[rng.permutation(n * c)[:e]] = np.arange(e)
        p = Placement(slots, e)
        loads = rng.integers(0, 30, (n, e))
        routing = fsep_routing(loads, p, 2)
        for i in range(n):
            per_slot = split_row(loads[i], p, i, 2)
            assert np.array_equal(np.bincount(slots.ravel(), per_slot.ravel(), minlength=e), loads[i])
            for j in range(e):  # per device it is the [N, E, N] rule's row
                assert np.array_equal((per_slot * (slots == j)).sum(1), routing[i, j])
            # a device's share of an expert is split evenly (within one) over its slots holding it
            for d in range(n):
                for j in np.unique(slots[d]):
                    s = per_slot[d][slots[d] == j]
                    assert s.max() - s.min() <= 1


def test_split_row_by_weights_follows_proportions():
    p = Placement(np.array([[0, 0, 1], [0, 2, 1]]), 3)
    w = np.zeros((3, 2))
    w[0] = [3, 1]  # expert 0: 3/4 to device 0 (two slots), 1/4 to device 1
    w[1] = [1, 1]
    # expert 2 has no weights: falls back to its replicas
    out = split_row_by_weights(np.array([9, 5, 4]), w, p, source=1)
    # expert 0: ideal 6.75 / 2.25 -> 7 / 2; device 0 splits 7 over two slots (remainder rotated by source 1)
    assert out.tolist() == [[3, 4, 3], [2, 4, 2]]
