"""The compiled (numba) planner kernels against the numpy path they replace: same plans, same numbers, bit for bit.

Also the facts the fast path relies on: numba's copy of numpy's float summation, and the margin that lets LAER+ skip
the exact score of layouts that cannot win.
"""

from __future__ import annotations

import numpy as np
import pytest

from training.placement import Placement, fsep_expected, fsep_expected_spread, fsep_summary
from training.planner import PlanCost, accel, make_planner
from training.planner.bound import waterfill_replicas
from training.planner.eplb import balanced_packing, eplb_placement
from training.planner.lpt import lpt_place, priority_replicas

pytestmark = pytest.mark.skipif(not accel.HAVE_NUMBA, reason="numba is not installed (the planners use the numpy path)")

PLANNERS = ["laer", "laer_plus", "eplb", "flexmoe"]


def _instance(rng, kind):
    """(N, C, G, E, loads): random sizes (including the planner_speed shape at N = 64) and adversarial loads."""
    n = int(rng.choice([2, 4, 8, 16, 64]))
    g = int(rng.choice([d for d in (1, 2, 4, 8) if n % d == 0]))
    c = int(rng.integers(1, 5))
    e = int(rng.integers(1, min(n * c, 40) + 1))
    loads = rng.multinomial(300, rng.dirichlet(np.ones(e)), size=n)
    if kind == "zero":
        loads[:] = 0
    elif kind == "hot_expert":
        loads[:, rng.integers(e)] += 5000
    elif kind == "hot_source":
        loads[rng.integers(n)] *= 50
    elif kind == "ties":
        loads = (loads // 50) * 50  # many equal loads: tie-breaking must match too
    return n, c, g, e, loads


KINDS = ["random", "zero", "hot_expert", "hot_source", "ties"]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("kind", KINDS)
def test_compiled_plans_equal_numpy_plans(seed, kind):
    n, c, g, _, loads = _instance(np.random.default_rng(seed), kind)
    for name in PLANNERS:
        fast = make_planner(name, n, c, g, jit=True).plan(loads)
        ref = make_planner(name, n, c, g, jit=False).plan(loads)
        np.testing.assert_array_equal(fast.placement, ref.placement, err_msg=name)
        np.testing.assert_array_equal(fast.device_tokens, ref.device_tokens, err_msg=name)
        assert fast.est_time_s == ref.est_time_s, name  # bit for bit, not approx
        assert fast.fsep_routed == ref.fsep_routed


@pytest.mark.parametrize("seed", range(20))
def test_compiled_steps_equal_numpy_steps(seed):
    rng = np.random.default_rng(100 + seed)
    n, c, g, e, loads = _instance(rng, KINDS[seed % len(KINDS)])
    w = loads.sum(0)
    np.testing.assert_array_equal(priority_replicas(w, n * c, n // g, jit=True),
                                  priority_replicas(w, n * c, n // g, jit=False))
    r = waterfill_replicas(w, n * c, jit=False)
    np.testing.assert_array_equal(waterfill_replicas(w, n * c, jit=True), r)
    np.testing.assert_array_equal(lpt_place(w, r, n, c, g, jit=True), lpt_place(w, r, n, c, g, jit=False))
    np.testing.assert_array_equal(eplb_placement(loads, n, c, g, jit=True), eplb_placement(loads, n, c, g, jit=False))
    items = rng.integers(0, 5, 4 * n).astype(float)  # ties on purpose
    np.testing.assert_array_equal(balanced_packing(items, n, jit=True), balanced_packing(items, n, jit=False))


@pytest.mark.parametrize("seed", range(20))
def test_compiled_scores_equal_numpy_scores(seed):
    rng = np.random.default_rng(200 + seed)
    n, c, g, e, loads = _instance(rng, KINDS[seed % len(KINDS)])
    slots = rng.integers(0, e, (n, c))
    slots.ravel()[:e] = rng.permutation(e)
    fast, ref = make_planner("laer", n, c, g, jit=True), make_planner("laer", n, c, g, jit=False)
    (obj_f, tok_f), (obj_r, tok_r) = fast.score(loads, slots), ref.score(loads, slots)
    assert obj_f == obj_r
    np.testing.assert_array_equal(tok_f, tok_r)
    np.testing.assert_array_equal(tok_r, fsep_summary(loads, Placement(slots, e), g)[0])
    est_f, est_r = fast.expected_score(loads, slots), ref.expected_score(loads, slots)
    assert est_f.objective == est_r.objective and est_f.margin == est_r.margin
    np.testing.assert_array_equal(est_f.tokens, est_r.tokens)
    cost = PlanCost.for_model()
    obj, tokens, intra, inter, spread = accel.kernels().expected_costs(loads, slots[None], e, g, cost.kernel_params())
    for got, want in zip((tokens[0], intra[0], inter[0]), fsep_expected(loads, slots, e, g)):
        np.testing.assert_array_equal(got, want)
    assert spread[0] == fsep_expected_spread(loads, slots, e, g)


def test_numpy_sum_copy_is_exact():
    # The compiled objectives reproduce numpy's summation order; if numpy ever changed it, this fails (not drifts).
    rng = np.random.default_rng(0)
    numpy_sum = accel.kernels().numpy_sum
    for size in [*range(0, 300), 511, 512, 513, 1000, 1024, 1500, 4096]:
        a = rng.random(size) * 10.0 ** rng.integers(-3, 7)
        assert numpy_sum(a) == a.sum(), size
        assert numpy_sum(a) == np.stack([a, a]).sum(1)[1], size  # row sums, as in [T, N] arrays


@pytest.mark.parametrize("jit", [True, False])
def test_expected_margin_bounds_exact_objective(jit):
    # LAER+ skips the exact score of a layout whose expected objective minus its margin exceeds another's plus its
    # margin; that is only sound if |exact - expected| <= margin always. Adversarial remainders: tiny loads, many
    # sources, replicas spread over nodes.
    rng = np.random.default_rng(7)
    worst = 0.0
    for trial in range(150):
        n, c, g, e, loads = _instance(rng, KINDS[trial % len(KINDS)])
        if trial % 3 == 0:
            loads = rng.integers(0, 4, (n, e))  # remainders dominate
        slots = rng.integers(0, e, (n, c))
        slots.ravel()[:e] = rng.permutation(e)
        planner = make_planner("laer_plus", n, c, g, jit=jit)
        exact, _ = planner.score(loads, slots)
        est = planner.expected_score(loads, slots)
        assert abs(exact - est.objective) <= est.margin, trial
        tokens = fsep_summary(loads, Placement(slots, e), g)[0]
        spread = fsep_expected_spread(loads, slots, e, g)
        assert np.all(np.abs(tokens - fsep_expected(loads, slots, e, g)[0]) <= spread)
        worst = max(worst, abs(exact - est.objective) / max(est.margin, 1e-300))
    assert worst > 0.05  # the cases are not trivially far inside the bound


def test_kernels_refuse_bad_slots():
    loads = np.ones((4, 3), dtype=np.int64)
    planner = make_planner("laer", 4, 1, 2, jit=True)
    with pytest.raises(ValueError, match="outside"):
        planner.score(loads, np.array([[0], [1], [2], [3]]))
    with pytest.raises(ValueError, match="outside"):
        planner.expected_score(loads, np.array([[0], [1], [-1], [2]]))
    with pytest.raises(ValueError, match="no replica"):
        planner.score(loads, np.array([[0], [1], [1], [0]]))


def test_jit_option():
    assert make_planner("laer", 4, 1, 2, jit=False).jit is False
    assert make_planner("laer", 4, 1, 2).jit is accel.HAVE_NUMBA
    assert accel.warm_up() >= 0.0
