"""Load statistics against direct numpy computations and hand-computed cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from common import synthetic
from common.stats import (
    EMALoad,
    RequestTypes,
    SlidingWindowLoad,
    bin_arrivals,
    cv,
    fit_request_types,
    imbalance,
    type_rates,
)


def test_sliding_window_matches_direct_mean():
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 100, size=(12, 3, 5))
    for w in (1, 4, 20):
        win = SlidingWindowLoad(w)
        for t, x in enumerate(xs):
            win.push(x)
            np.testing.assert_allclose(win.mean(), xs[max(0, t + 1 - w) : t + 1].mean(axis=0))
            assert len(win) == min(t + 1, w)


def test_sliding_window_copies_and_checks():
    win = SlidingWindowLoad(2)
    with pytest.raises(ValueError, match="nothing pushed"):
        win.mean()
    x = np.array([1, 2])
    win.push(x)
    x[0] = 100  # the caller's later edit must not reach the window
    np.testing.assert_array_equal(win.mean(), [1, 2])
    with pytest.raises(ValueError, match="differs"):
        win.push([1, 2, 3])
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="window"):
            SlidingWindowLoad(bad)


def test_ema_hand_case():
    ema = EMALoad(0.5)
    with pytest.raises(ValueError, match="nothing pushed"):
        _ = ema.value
    ema.push([4.0, 0.0])
    np.testing.assert_allclose(ema.value, [4.0, 0.0])  # first push is taken as is
    ema.push([0.0, 8.0])
    np.testing.assert_allclose(ema.value, [2.0, 4.0])
    ema.push([2.0, 0.0])
    np.testing.assert_allclose(ema.value, [2.0, 2.0])
    with pytest.raises(ValueError, match="alpha"):
        EMALoad(0.0)


def test_ema_matches_closed_form():
    rng = np.random.default_rng(1)
    xs = rng.random((10, 4, 6))
    a = 0.3
    ema = EMALoad(a)
    for x in xs:
        ema.push(x)
    # value = (1-a)^(n-1) x_0 + sum_{t>=1} a (1-a)^(n-1-t) x_t
    n = len(xs)
    w = np.array([(1 - a) ** (n - 1)] + [a * (1 - a) ** (n - 1 - t) for t in range(1, n)])
    np.testing.assert_allclose(ema.value, np.tensordot(w, xs, axes=1))


def test_imbalance_and_cv_hand_cases():
    x = np.array([[1, 2, 3], [0, 0, 0], [4, 4, 4], [0, 0, 9]])
    np.testing.assert_allclose(imbalance(x), [1.5, 1.0, 1.0, 3.0])  # all-zero row counts as balanced
    np.testing.assert_allclose(cv(np.array([[1, 3], [0, 0], [5, 5]])), [0.5, 0.0, 0.0])
    np.testing.assert_allclose(imbalance(x, axis=0), [4 / 1.25, 4 / 1.5, 9 / 4])
    assert not np.isnan(imbalance(np.zeros((3, 4)))).any() and not np.isnan(cv(np.zeros((3, 4)))).any()
    for f in (imbalance, cv):
        with pytest.raises(ValueError, match=">= 0"):
            f([1, -1])
        with pytest.raises(ValueError, match="finite"):
            f([1, np.nan])


def test_imbalance_and_cv_random_against_numpy():
    x = np.random.default_rng(2).integers(1, 50, size=(7, 9, 11))
    for axis in (0, 1, -1):
        np.testing.assert_allclose(imbalance(x, axis), x.max(axis) / x.mean(axis))
        np.testing.assert_allclose(cv(x, axis), x.std(axis) / x.mean(axis))


def test_bin_arrivals_hand_case():
    t = [0.0, 0.5, 1.0, 2.9, 3.0]
    np.testing.assert_array_equal(bin_arrivals(t, 1.0), [2, 1, 1, 1])
    np.testing.assert_array_equal(bin_arrivals(t, 1.0, num_bins=6), [2, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(bin_arrivals([], 1.0), [])
    with pytest.raises(ValueError, match="too few"):
        bin_arrivals(t, 1.0, num_bins=3)
    with pytest.raises(ValueError, match="interval_s"):
        bin_arrivals(t, 0.0)
    with pytest.raises(ValueError, match=">= 0"):
        bin_arrivals([-1.0], 1.0)


def test_bin_arrivals_against_histogram():
    t = np.sort(np.random.default_rng(3).uniform(0, 100, 1000))
    got = bin_arrivals(t, 7.0)
    ref, _ = np.histogram(t, bins=np.arange(0, 7.0 * (len(got) + 1), 7.0))
    np.testing.assert_array_equal(got, ref)
    assert got.sum() == 1000


def test_type_rates_hand_case():
    t = [0.0, 1.0, 59.9, 60.0, 150.0]
    lab = [0, 1, 0, 2, 1]
    want = np.array([[2, 1, 0], [0, 0, 1], [0, 1, 0]]) / 60.0
    np.testing.assert_allclose(type_rates(t, lab, 3, 60.0), want)
    np.testing.assert_allclose(type_rates(t, lab, 3, 60.0).sum(1) * 60.0, bin_arrivals(t, 60.0))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        type_rates(t, lab, 2, 60.0)
    with pytest.raises(ValueError, match="one per arrival"):
        type_rates(t, lab[:-1], 3, 60.0)


def _brute_assign(x, c):
    out = []
    for p in x:
        d = [((p - cc) ** 2).sum() for cc in c]
        out.append(int(np.argmin(d)))
    return np.array(out)


def test_assign_matches_brute_force():
    rng = np.random.default_rng(4)
    inp, out = rng.integers(0, 5000, 300), rng.integers(0, 800, 300)
    types = RequestTypes(rng.uniform(0, 9, size=(5, 2)))
    x = np.stack([np.log1p(inp), np.log1p(out)], axis=1)
    np.testing.assert_array_equal(types.assign(inp, out), _brute_assign(x, types.centers))
    tie = RequestTypes([[1.0, 1.0], [3.0, 1.0]])
    assert tie.assign([np.expm1(2.0)], [np.expm1(1.0)]).tolist() == [0]  # equidistant: lower index


def test_kmeans_recovers_separated_clusters():
    types = (
        synthetic.RequestTypeSpec(100.0, 10.0, 0.3, sigma=0.1),
        synthetic.RequestTypeSpec(3000.0, 20.0, 0.3, sigma=0.1),
        synthetic.RequestTypeSpec(500.0, 600.0, 0.4, sigma=0.1),
    )
    tr, truth = synthetic.synthetic_request_trace(900, 10.0, types=types, seed=7)
    rt = fit_request_types(tr.input_tokens, tr.output_tokens, k=3, seed=0)
    got = rt.assign(tr.input_tokens, tr.output_tokens)
    # Centers sorted by input: 100 -> type 0, 500 -> type 1, 3000 -> type 2.
    np.testing.assert_array_equal(got, np.array([0, 2, 1])[truth])
    np.testing.assert_allclose(rt.centers_tokens(), [[100, 10], [500, 600], [3000, 20]], rtol=0.05)


def test_kmeans_is_a_lloyd_fixed_point_and_deterministic():
    tr, _ = synthetic.synthetic_request_trace(600, 5.0, seed=8)
    rt = fit_request_types(tr.input_tokens, tr.output_tokens, k=4, seed=11)
    x = np.stack([np.log1p(tr.input_tokens), np.log1p(tr.output_tokens)], axis=1)
    lab = _brute_assign(x, rt.centers)
    for j in range(4):
        np.testing.assert_allclose(rt.centers[j], x[lab == j].mean(axis=0))
    again = fit_request_types(tr.input_tokens, tr.output_tokens, k=4, seed=11)
    np.testing.assert_array_equal(rt.centers, again.centers)
    assert np.all(np.diff(rt.centers[:, 0]) >= 0)


def test_kmeans_with_duplicates():
    pts = [(10, 1), (10, 1), (10, 1), (1000, 50), (1000, 50), (40, 400)]
    inp, out = np.array(pts).T
    for seed in range(5):
        rt = fit_request_types(inp, out, k=3, seed=seed)
        np.testing.assert_allclose(rt.centers_tokens(), [[10, 1], [40, 400], [1000, 50]])
    with pytest.raises(ValueError, match="only 3 distinct"):
        fit_request_types(inp, out, k=4)
    with pytest.raises(ValueError, match="k must be"):
        fit_request_types(inp, out, k=0)


def test_kmeans_reaches_the_optimum_on_a_small_case():
    """Brute force over every partition of 7 points into 2 clusters: k-means must reach a local optimum whose cost is
    the global one on this easy, two-blob case."""
    pts = np.array([(5, 5), (6, 5), (5, 7), (200, 30), (220, 25), (210, 40), (190, 33)])
    x = np.log1p(pts.astype(float))
    best = min(
        sum(((x[np.array(m) == j] - x[np.array(m) == j].mean(0)) ** 2).sum() for j in (0, 1))
        for m in itertools.product((0, 1), repeat=7)
        if 0 < sum(m) < 7
    )
    rt = fit_request_types(pts[:, 0], pts[:, 1], k=2, seed=0)
    lab = rt.assign(pts[:, 0], pts[:, 1])
    cost = sum(((x[lab == j] - rt.centers[j]) ** 2).sum() for j in (0, 1))
    assert cost == pytest.approx(best)


def test_kmeans_refills_an_empty_cluster():
    """A center far from every point gets no points; it must take the point farthest from its own center."""
    from common.stats import _kmeans

    x = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0], [5.1, 5.0], [6.0, 6.0]])
    c = _kmeans(x, np.array([[0.0, 0.0], [5.0, 5.0], [100.0, 100.0]]), max_iter=50)
    lab = _brute_assign(x, c)
    assert sorted(np.bincount(lab, minlength=3).tolist()) == [1, 2, 3]
    np.testing.assert_allclose(sorted(map(tuple, c)), [(0.1 / 3, 0.1 / 3), (5.05, 5.0), (6.0, 6.0)])


def test_static_ep_imbalance_hand_case():
    from common.stats import static_ep_imbalance

    t = np.array([[3, 1, 0, 0], [1, 1, 2, 0]])  # EP devices hold experts {0,1} and {2,3}: 6 vs 2 routes
    assert static_ep_imbalance(t, 2) == 1.5
    assert static_ep_imbalance(t.sum(0), 2) == 1.5  # per-source rows or expert totals alike
    assert static_ep_imbalance(t, 4) == 4 / 2  # devices 0..3: 4, 2, 2, 0 routes
    with pytest.raises(ValueError, match="do not split"):
        static_ep_imbalance(t, 3)
