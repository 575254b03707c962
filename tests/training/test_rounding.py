"""Largest-remainder rounding against the rule done by hand on each row."""

import numpy as np

from training.rounding import largest_remainder


def _reference(row, total):
    floors = [int(np.floor(x + 1e-9)) for x in row]
    order = sorted(range(len(row)), key=lambda i: (-(row[i] - floors[i]), i))  # largest fraction, then lower index
    for i in order[: total - sum(floors)]:
        floors[i] += 1
    return floors


def test_largest_remainder_matches_hand_rule_and_keeps_totals():
    rng = np.random.default_rng(0)
    for _ in range(200):
        m = int(rng.integers(1, 7))
        total = int(rng.integers(0, 50))
        w = rng.random(m) * (rng.random(m) < 0.8)
        w = w if w.sum() > 0 else np.ones(m)
        if rng.random() < 0.3:
            w = np.round(w * 4) + 1  # ties in the fractional parts
        shares = total * w / w.sum()
        out = largest_remainder(shares, total)
        assert out.sum() == total and np.all(np.abs(out - shares) < 1)
        assert out.tolist() == _reference(shares, total)


def test_largest_remainder_rows_and_float_error():
    shares = np.array([[0.5, 1.5, 1.0], [2.0, 0.0, 1.0], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_array_equal(largest_remainder(shares, np.array([3, 3, 1])), [[1, 1, 1], [2, 0, 1], [1, 0, 0]])
    # A share a few ulps below 3 keeps its third token instead of handing it to a tie elsewhere.
    assert largest_remainder(np.array([3 - 1e-12, 0.5, 0.5]), 4).tolist() == [3, 1, 0]
