import itertools

import numpy as np
import pytest

from serving.scheduler import TieBreak, solve_dispatch
from tests.serving.flow_reference import solve_dispatch_flow


def _vertex_max(n, lam):
    """Brute force: the LP optimum is at a vertex; try every basis of K*J active constraints."""
    K, J = n.shape
    rows, rhs = [], []
    for j in range(J):
        r = np.zeros(K * J)
        r[j::J] = 1
        rows.append(r)
        rhs.append(lam[j])
    for k in range(K):
        r = np.zeros(K * J)
        r[k * J:(k + 1) * J] = 1 / n[k]
        rows.append(r)
        rhs.append(1.0)
    for v in range(K * J):
        r = np.zeros(K * J)
        r[v] = -1
        rows.append(r)
        rhs.append(0.0)
    A, b = np.array(rows), np.array(rhs)
    best = -1.0
    for basis in itertools.combinations(range(len(rows)), K * J):
        M = A[list(basis)]
        if abs(np.linalg.det(M)) < 1e-12:
            continue
        x = np.linalg.solve(M, b[list(basis)])
        if np.all(A @ x <= b + 1e-9):
            best = max(best, x.sum())
    return best


@pytest.mark.parametrize("seed", range(8))
def test_lp_matches_vertex_brute_force(seed):
    rng = np.random.default_rng(seed)
    K, J = rng.integers(1, 3, endpoint=True), rng.integers(1, 3, endpoint=True)
    n = rng.uniform(0.5, 10, (K, J))
    lam = rng.uniform(0.5, 15, J)
    d = solve_dispatch(n, lam, tie_break=TieBreak.none)
    assert d.served_rps == pytest.approx(_vertex_max(n, lam), rel=1e-7)


@pytest.mark.parametrize("seed", range(10))
def test_flow_and_lp_agree_and_conserve(seed):
    rng = np.random.default_rng(100 + seed)
    K, J = rng.integers(1, 6), rng.integers(1, 5)
    n = rng.uniform(0.1, 20, (K, J)) * (rng.random((K, J)) > 0.2)
    lam = rng.uniform(0, 30, J)
    counts = rng.integers(1, 4, K)
    lp = solve_dispatch(n, lam, latency=rng.uniform(1, 5, (K, J)), counts=counts, headroom=0.7)
    fl = solve_dispatch_flow(n, lam, counts=counts)
    assert lp.served_rps == pytest.approx(fl.served_rps, rel=1e-6, abs=1e-9)
    for d in (lp, fl):
        assert np.all(d.x >= 0)
        assert np.all(d.x.sum(0) <= lam + 1e-6)  # never more than arrives
        assert np.all(d.x[n == 0] <= 1e-9)  # nothing to a replica that cannot serve the type
        util = (d.x / np.where(n > 0, n, 1)).sum(1) / counts
        assert np.all(util <= 1 + 1e-6)
        assert d.served_rps == pytest.approx(d.x.sum())


def test_ample_capacity_serves_everything_and_ties_go_to_lower_latency():
    n = np.array([[10.0, 10.0], [10.0, 10.0]])
    lam = np.array([2.0, 2.0])
    lat = np.array([[1.0, 1.0], [3.0, 3.0]])
    d = solve_dispatch(n, lam, latency=lat, headroom=0.8)
    assert d.served_rps == pytest.approx(4.0)
    assert d.x[0].sum() == pytest.approx(4.0)  # the fast replica takes all (40% < 80% headroom)
    b = solve_dispatch(n, lam, latency=lat, headroom=0.0)
    assert b.x[0].sum() == pytest.approx(2.0) and b.peak_utilisation == pytest.approx(0.2)  # balanced


def test_overload_serves_capacity():
    n = np.array([[4.0, 1.0]])
    d = solve_dispatch(n, np.array([10.0, 10.0]))
    assert d.served_rps == pytest.approx(4.0)  # all capacity on the cheap type
    with pytest.raises(ValueError, match="shapes"):
        solve_dispatch(n, np.array([1.0]))
