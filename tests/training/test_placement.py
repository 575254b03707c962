import numpy as np
import pytest

from training.placement import Placement, fsdp_ep_placement, holder_counts, static_ep_placement


def test_placement_validation():
    with pytest.raises(ValueError, match=r"slot \[1, 0\] holds expert 4"):
        Placement(np.array([[0, 1], [4, 2]]), num_experts=4)
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        Placement(np.array([0, 1]), num_experts=2)
    p = Placement(np.array([[0, 0], [1, 2]]), num_experts=4)
    assert p.replica_counts().tolist() == [2, 1, 1, 0]
    assert p.holders()[0].tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"experts \[3\]"):
        p.require_all_experts()
    with pytest.raises(ValueError):
        p.slots[0, 0] = 1  # frozen


def test_static_layouts():
    assert static_ep_placement(4, 8).slots.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    # device d holds {i * (E/C) + d mod (E/C)}: E=8, C=2 -> groups of 4
    assert fsdp_ep_placement(4, 8, 2).slots.tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert fsdp_ep_placement(8, 8, 2).slots[5].tolist() == [1, 5]


def test_holder_counts_count_slots():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n, c, e = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(1, 7))
        slots = rng.integers(0, e, (n, c))
        h = holder_counts(slots, e)
        for j in range(e):
            for d in range(n):
                assert h[j, d] == sum(1 for s in slots[d] if s == j)
