"""Property-based checks of every planner on random and adversarial loads, plus the replica lower bound."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from training.placement import Placement
from training.planner import PLANNERS, make_planner, replica_lower_bound, waterfill_replicas
from training.routing import fsep_expected, fsep_routing, fsep_summary, traffic_summary

HEURISTICS = ["fsdp_ep", "laer", "laer_plus", "flexmoe", "eplb"]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def instances(draw):
    """(N, C, G, loads [N, E]) with E | C (for fsdp_ep) and N*C >= E, loads random or adversarial."""
    g = draw(st.sampled_from([1, 2, 4]))
    k = draw(st.integers(1, 3))
    n = g * k
    c = draw(st.sampled_from([1, 2, 3, 4]))
    e = draw(st.sampled_from([d for d in range(1, n * c + 1) if d % c == 0] or [c]))
    if e > n * c:
        e = c
    kind = draw(st.sampled_from(["random", "zero", "hot_expert", "hot_source", "sparse"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    loads = rng.integers(0, 200, (n, e))
    if kind == "zero":
        loads[:] = 0
    elif kind == "hot_expert":
        loads[:, rng.integers(e)] += 5000
    elif kind == "hot_source":
        loads[rng.integers(n)] *= 50
    elif kind == "sparse":
        loads *= rng.random((n, e)) < 0.2
    return n, c, g, loads


def check_plan(plan, loads, n, c):
    e = loads.shape[1]
    slots = plan.layout.slots
    assert slots.shape == (n, c)
    assert slots.min() >= 0 and slots.max() < e
    # Every expert keeps a replica (the heuristics restore all experts; tokens may come next step).
    assert set(np.unique(slots)) == set(range(e))
    r = plan.routing
    assert r.shape == (n, e, n) and r.min() >= 0
    np.testing.assert_array_equal(r.sum(2), loads)  # conservation
    holders = plan.layout.holders()  # [E, N]
    assert not np.any((r > 0) & (holders[None, :, :] == 0)), "tokens sent to a device without the expert"
    np.testing.assert_array_equal(plan.device_tokens, r.sum((0, 1)))
    assert np.isfinite(plan.est_time_s) and plan.est_time_s >= 0
    assert plan.device_tokens.max(initial=0) >= replica_lower_bound(loads, n, c) - 1e-9


@SETTINGS
@given(instances())
def test_heuristic_plans_are_valid(inst):
    n, c, g, loads = inst
    for name in HEURISTICS:
        plan = make_planner(name, n, c, g).plan(loads)
        check_plan(plan, loads, n, c)


@SETTINGS
@given(instances())
def test_static_ep_when_shapes_fit(inst):
    n, c, g, loads = inst
    loads = np.tile(loads[:, :1], (1, n * c))  # E = N*C: every slot a different expert
    plan = make_planner("static_ep", n, c, g).plan(loads)
    check_plan(plan, loads, n, c)
    np.testing.assert_array_equal(np.sort(plan.layout.slots.ravel()), np.arange(n * c))


@SETTINGS
@given(instances())
def test_laer_plus_not_worse_than_laer(inst):
    n, c, g, loads = inst
    laer = make_planner("laer", n, c, g).plan(loads)
    plus = make_planner("laer_plus", n, c, g).plan(loads)
    assert plus.est_time_s <= laer.est_time_s * (1 + 1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=4), st.integers(0, 3))
def test_waterfill_matches_brute_force(w, extra):
    w = np.array(w)
    slots = w.size + extra
    r = waterfill_replicas(w, slots)
    assert r.sum() == slots and r.min() >= 1
    best = min(
        max(w / np.array(rr)) for rr in itertools.product(range(1, slots + 1), repeat=w.size) if sum(rr) == slots
    )
    assert max(w / r) == pytest.approx(best)


def test_bound_below_brute_force_best_plan():
    """On tiny instances, enumerate every placement and every integer routing: the bound is below all of them."""
    rng = np.random.default_rng(3)
    for _ in range(5):
        n, c, e = 2, 2, 3
        loads = rng.integers(0, 6, (n, e))
        best = np.inf
        for flat in itertools.product(range(e), repeat=n * c):
            slots = np.array(flat).reshape(n, c)
            h = Placement(slots, e).holders() > 0  # [E, N]
            if not h.any(1).all():
                continue
            # Per (i, j) the split over two devices: choose how many go to device 0.
            pairs = [(i, j) for i in range(n) for j in range(e)]
            options = [range(loads[i, j] + 1) if h[j].all() else [loads[i, j] if h[j, 0] else 0] for i, j in pairs]
            for split in itertools.product(*options):
                d0 = sum(split)
                best = min(best, max(d0, loads.sum() - d0))
        assert replica_lower_bound(loads, n, c) <= best + 1e-9


def test_fsep_summary_equals_loop_routing():
    rng = np.random.default_rng(0)
    for _ in range(60):
        g, k, c = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
        n = g * k
        e = int(rng.integers(1, n * c + 1))
        slots = rng.integers(0, e, (n, c))
        slots.ravel()[:e] = rng.permutation(e)
        p = Placement(slots, e)
        loads = rng.integers(0, 30, (n, e)) * (rng.random((n, e)) < 0.7)
        routing = fsep_routing(loads, p, g)
        tokens, intra, inter = fsep_summary(loads, p, g)
        np.testing.assert_array_equal(np.stack([tokens, intra, inter]), np.stack(traffic_summary(routing, g)))
        traffic = routing.sum(1)
        np.fill_diagonal(traffic, 0)
        node = np.arange(n) // g
        same = node[:, None] == node[None, :]
        np.testing.assert_array_equal(tokens, routing.sum((0, 1)))
        np.testing.assert_array_equal(intra, (traffic * same).sum(1))
        np.testing.assert_array_equal(inter, (traffic * ~same).sum(1))


def test_registry_names():
    assert set(PLANNERS) == {"static_ep", "fsdp_ep", "laer", "laer_plus", "flexmoe", "eplb", "milp"}
    with pytest.raises(ValueError, match="unknown planner"):
        make_planner("nope", 2, 1, 1)


def test_fsep_expected_close_to_exact():
    rng = np.random.default_rng(1)
    for _ in range(40):
        g, k, c = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
        n = g * k
        e = int(rng.integers(1, n * c + 1))
        slots = rng.integers(0, e, (n, c))
        slots.ravel()[:e] = rng.permutation(e)
        loads = rng.integers(0, 30, (n, e))
        exact = fsep_summary(loads, Placement(slots, e), g)
        approx = [x[0] for x in fsep_expected(loads, slots[None], e, g)[0]]
        assert approx[0].sum() == pytest.approx(loads.sum())
        for a, b in zip(exact, approx):
            # Integer remainders move less than one token per (source, expert) pair.
            assert np.all(np.abs(a - b) <= (loads > 0).sum() + 1e-9)
