"""Hand-computed cases, the exact MILP as the oracle, bad input, the plan contract, the async wrapper."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from training.placement import Placement
from training.planner import PLANNERS, AsyncPlanner, Plan, Planner, PlanObjective, make_planner, replica_lower_bound
from training.planner.lpt import PlacementRule, lpt_place, priority_replicas

HEURISTICS = ["fsdp_ep", "laer", "laer_plus", "flexmoe", "eplb"]


def test_two_devices_hand_computed():
    # 2 devices on one node, 2 experts, C = 1: each device holds one expert, so device tokens are the expert totals.
    loads = np.array([[30, 10], [50, 10]])
    plan = make_planner("laer", 2, 1, 2).plan(loads)
    assert sorted(plan.device_tokens.tolist()) == [20, 80]
    # Cost: expert 0 on device d0, expert 1 on d1 (or mirrored); tokens cross between the devices once each.
    cost = PlanObjective(token_bytes=1.0, per_token_s=1.0, intra_bw=1.0, inter_bw=0.5)
    plan = make_planner("laer", 2, 1, 2, objective=cost).plan(loads)
    holder0 = int(np.flatnonzero(plan.layout.slots[:, 0] == 0)[0])
    sent = [loads[0, 1], loads[1, 0]] if holder0 == 0 else [loads[0, 0], loads[1, 1]]
    assert plan.est_time_s == pytest.approx(4 * sum(sent) + 3 * 80)


def test_two_devices_two_nodes_replicated():
    # C = 2 on two single-device nodes, 1 hot expert: even candidate gives each device both experts; every source
    # keeps its tokens local, so no communication and device tokens equal source totals.
    loads = np.array([[90, 10], [60, 20]])
    cost = PlanObjective(token_bytes=1.0, per_token_s=1.0, intra_bw=1.0, inter_bw=1.0)
    plan = make_planner("laer", 2, 2, 1, objective=cost).plan(loads)
    slots = plan.layout.slots
    assert sorted(slots[0].tolist()) == [0, 1] and sorted(slots[1].tolist()) == [0, 1]
    np.testing.assert_array_equal(plan.device_tokens, [100, 80])
    assert plan.est_time_s == pytest.approx(3 * 100)


def test_priority_queue_matches_paper_rule():
    # 2 nodes, 8 slots, 3 experts: start at 2 each (6), then +2 to the hottest: [4, 2, 2].
    np.testing.assert_array_equal(priority_replicas(np.array([100, 10, 5]), 8, 2), [4, 2, 2])
    # 4 slots < 2 nodes * 3 experts: start at 1 each, then +1 to the hottest.
    np.testing.assert_array_equal(priority_replicas(np.array([100, 10, 5]), 4, 2), [2, 1, 1])


# 3 nodes of 2 devices, C = 2 (12 slots), 8 experts: 3 * 8 = 24 > 12, so every expert starts with 1 (4 left).
CAP_LOADS = np.array([700, 100, 90, 80, 70, 60, 50, 40])


def test_priority_queue_cap_binds_three_nodes():
    # By the paper's rule (load per replica in brackets):
    #   e0 [700] has 1 < 3 replicas: +1 -> 2, 3 left;  e0 [350]: +1 -> 3, 2 left;
    #   e0 [233] has 3 >= 3: its +3 does not fit in 2, so e0 stops growing at 3;
    #   e1 [100] is next: 1 < 3, +1 -> 2, 1 left;  e2 [90] beats e1 [50]: +1 -> 2, 0 left.
    # (Capping e0's step instead would give [5, 1, 1, 1, 1, 1, 1, 1].)
    np.testing.assert_array_equal(priority_replicas(CAP_LOADS, 12, 3), [3, 2, 2, 1, 1, 1, 1, 1])


def test_laer_three_nodes_cap_and_placement_by_hand():
    # The plan of the case above: 12 % 8 != 0, so the priority queue is the only candidate. Placement by the paper's
    # rule, load per replica: e0 233.3 x3, e3 80, e4 70, e5 60, e1 50 x2, e6 50, e2 45 x2, e7 40 (ties: lower id).
    # Nodes n0 = {d0, d1}, n1 = {d2, d3}, n2 = {d4, d5}.
    #   e0: d0; then n1, n2 have no copy: d2; then n2: d4          (d0 = d2 = d4 = 233.3)
    #   e3 -> d1 (80), e4 -> d3 (70), e5 -> d5 (60): the empty devices in id order
    #   e1: d5 (60, lightest); then n0, n1 have no copy: d3 (70) -> d3, d5 full
    #   e6: lightest free is d1 (80) -> d1 full
    #   e2: d0 (233.3, lowest id of three ties); then n1, n2: d2;  e7: d4, the last free slot
    loads = np.zeros((6, 8), dtype=np.int64)
    loads[0] = CAP_LOADS  # only the expert totals matter for the layout
    plan = make_planner("laer", 6, 2, 2).plan(loads)
    np.testing.assert_array_equal(plan.layout.slots, [[0, 2], [3, 6], [0, 2], [4, 1], [0, 7], [5, 1]])


def test_paper_placement_node_fallback_three_nodes():
    # 3 nodes of one device each, C = 5; experts and replicas: e0 (200, 1), e1 (100, 1), e2..e6 (10, 1 each),
    # e7 (30, 6 -> 5 per replica), e8 (2, 2 -> 1 per replica).
    #   e0 -> d0 (200); e1 -> d1 (100); e2..e6 -> d2 (always the lightest: 0..40), so d2 is full with no e7.
    #   e7, paper rule (fewest copies over all nodes; if all of those are full, the lightest free device):
    #     #1: no copies anywhere, lightest free d1 (105); #2: n0 and n2 have none, n2 full: d0 (205);
    #     #3..#5: only full n2 has the fewest (0): fallback to the lightest free device: d1 110, 115, 120 (d1 full);
    #     #6: fallback, d0 (210).
    #   e8: #1: no copies, d0 is the only free device; #2: n1, n2 have none but are full: fallback d0.
    w = np.array([200, 100, 10, 10, 10, 10, 10, 30, 2])
    r = np.array([1, 1, 1, 1, 1, 1, 1, 6, 2])
    paper = lpt_place(w, r, 3, 5, 1, PlacementRule.PAPER)
    np.testing.assert_array_equal(paper, [[0, 7, 7, 8, 8], [1, 7, 7, 7, 7], [2, 3, 4, 5, 6]])
    # Ours (fewest copies among the nodes with a free slot): e7 #1 d1; then copies (d0, d1) 0-1 -> d0, 1-1 -> the
    # lighter d1, 1-2 -> d0, 2-2 -> d1 (115), 2-3 -> d0 (215); e8: no copies, the lighter d1 then d0.
    ours = lpt_place(w, r, 3, 5, 1, PlacementRule.FREE_NODES)
    np.testing.assert_array_equal(ours, [[0, 7, 7, 7, 8], [1, 7, 7, 7, 8], [2, 3, 4, 5, 6]])


@pytest.mark.parametrize("seed", range(3))
def test_milp_beats_every_heuristic_on_small_instances(seed):
    rng = np.random.default_rng(seed)
    n, c, g, e = 4, 2, 2, 4
    loads = rng.integers(0, 40, (n, e))
    loads[:, 0] += 100  # one hot expert
    milp = make_planner("milp", n, c, g, time_limit_s=20).plan(loads)
    assert milp.gap is not None and milp.gap < 1e-3, "small instance should solve to optimality"
    np.testing.assert_array_equal(milp.routing.sum(2), loads)
    assert milp.device_tokens.max() >= replica_lower_bound(loads, n, c) - 1e-9
    for name in HEURISTICS:
        h = make_planner(name, n, c, g).plan(loads)
        assert milp.est_time_s <= h.est_time_s * (1 + 1e-6), name


@pytest.mark.parametrize("name", ["laer", "laer_plus", "eplb", "flexmoe", "fsdp_ep", "milp", "static_ep"])
def test_bad_loads_clear_errors(name):
    p = make_planner(name, 2, 2, 1)
    with pytest.raises(ValueError, match="negative"):
        p.plan(np.array([[1, -1, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="finite"):
        p.plan(np.array([[1.0, np.nan, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="finite"):
        p.plan(np.array([[1.0, np.inf, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match=r"cannot hold E=5"):
        p.plan(np.ones((2, 5), dtype=int))
    with pytest.raises(ValueError, match=r"\[N=2, E\]"):
        p.plan(np.ones((3, 4), dtype=int))
    with pytest.raises(ValueError, match="integer token counts"):
        p.plan(np.full((2, 4), 0.5))


def test_bad_config_clear_errors():
    with pytest.raises(ValueError, match="devices_per_node"):
        make_planner("laer", 6, 2, 4)
    with pytest.raises(ValueError, match="bad option"):
        make_planner("laer", 4, 2, 2, nonsense=1)
    with pytest.raises(ValueError, match="time_limit_s"):
        make_planner("milp", 4, 2, 2, time_limit_s=0)


def test_plan_is_frozen():
    p = make_planner("laer", 4, 2, 2).plan(np.arange(16).reshape(4, 4))
    with pytest.raises(AttributeError):
        p.est_time_s = 0.0
    assert isinstance(p.layout, Placement) and not hasattr(p, "placement")


def _traffic_by_brute_force(routing, g):
    """Per-token walk of a routing [N, E, N]: (device tokens, tokens sent inside the node, tokens sent across)."""
    n = routing.shape[0]
    tokens, intra, inter = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for i, j, d in zip(*np.nonzero(routing)):
        x = routing[i, j, d]
        tokens[d] += x
        if d != i:
            (intra if d // g == i // g else inter)[i] += x
    return tokens, intra, inter


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("name", ["laer", "laer_plus", "eplb", "flexmoe", "milp"])
def test_plan_routing_matches_loads_and_device_tokens(name, seed):
    # The plan's routing is what the runtime executes and device_tokens/est_time_s what the planner optimised: they
    # must describe the same traffic. Random loads, FSEP-routed and flow-routed (laer_plus on 4x2, milp) plans.
    rng = np.random.default_rng(seed)
    n, c, g, e = [(4, 2, 2, 4), (4, 1, 2, 4), (8, 2, 4, 8), (2, 3, 1, 5)][seed % 4]
    if name == "milp" and n * c > 8:
        n, c, g, e = 4, 2, 2, 4
    loads = rng.integers(0, 60, (n, e)) * (rng.random((n, e)) < 0.8)
    planner = make_planner(name, n, c, g, **({"time_limit_s": 5} if name == "milp" else {}))
    plan = planner.plan(loads)
    r = plan.routing
    brute_sums = np.zeros((n, e), dtype=np.int64)
    for i in range(n):
        for j in range(e):
            for d in range(n):
                brute_sums[i, j] += r[i, j, d]
    np.testing.assert_array_equal(brute_sums, loads)
    tokens, intra, inter = _traffic_by_brute_force(r, g)
    np.testing.assert_array_equal(plan.device_tokens, tokens)
    assert plan.est_time_s == pytest.approx(planner.objective.objective(tokens, intra, inter), rel=1e-12)
    holders = plan.layout.holders()
    assert not np.any((r > 0) & (holders[None] == 0)), "tokens routed to a device without the expert"


def test_every_registry_entry_is_a_concrete_planner():
    rng = np.random.default_rng(0)
    n, c, g = 4, 2, 2
    for name, cls in PLANNERS.items():
        assert issubclass(cls, Planner) and not inspect.isabstract(cls), name
        assert cls.name == name
        e = n * c if name == "static_ep" else 4
        loads = rng.integers(0, 50, (n, e))
        plan = make_planner(name, n, c, g, **({"time_limit_s": 5} if name == "milp" else {})).plan(loads)
        assert isinstance(plan, Plan) and plan.algorithm == name
        assert plan.layout.slots.shape == (n, c) and plan.layout.num_experts == e
        plan.layout.require_all_experts()
        assert plan.device_tokens.sum() == loads.sum()
        assert plan.device_tokens.max() >= replica_lower_bound(loads, n, c) - 1e-9
    with pytest.raises(TypeError, match="abstract"):
        Planner(4, 2, 2)


def test_async_planner_deterministic_and_newest_wins():
    """The planner process plans what the planner plans in-process; wait() answers the newest submission."""
    rng = np.random.default_rng(0)
    loads = [rng.integers(0, 100, (2, 4, 8)) for _ in range(4)]  # [L=2, N, E] per step
    direct = [make_planner("laer", 4, 4, 2).plan(x) for x in loads[-1]]
    with AsyncPlanner(make_planner("laer", 4, 4, 2)) as ap:
        for step, x in enumerate(loads):
            ap.submit(step, x)
        result = ap.wait()
    assert result.step == 3 and result.solve_s >= 0
    for got, want in zip(result.plans, direct):
        np.testing.assert_array_equal(got.slots, want.layout.slots)
        np.testing.assert_array_equal(got.device_tokens, want.device_tokens)
    with pytest.raises(ValueError, match="negative"):
        with AsyncPlanner(make_planner("laer", 4, 4, 2)) as ap:
            ap.submit(0, -np.ones((1, 4, 8)))


def test_flexmoe_layout_carries_moves_across_plans():
    # One node of 4 devices, C = 2, E = 4, all tokens from d0: totals e0..e3 = 240, 80, 80, 40 (every split exact).
    # Static FSDP+EP: d0 {0,2} d1 {1,3} d2 {0,2} d3 {1,3}; tokens 120+40, 40+20, 120+40, 40+20 = [160, 60, 160, 60].
    # Round 1: per replica 120, 40, 40, 20: hot e0, donor e3 (last, more replicas than the 1 node); idlest holder of
    #   e3 is d1; e0 grows on d0 (first holder with room), whose other expert e2 moves to d1 in e3's slot:
    #   d0 {0,0} d1 {1,2} d2 {0,2} d3 {1,3}; e0 80 per replica: [160, 40+40, 80+40, 40+40] = [160, 80, 120, 80];
    #   max unchanged but max/min 2.67 -> 2: kept.
    # Round 2: replicas 3, 2, 2, 1, per replica 80, 40, 40, 40: hot e0, donor e2 (e3 has one replica); idlest holder
    #   d1; e0 grows on d2 (d0 is full of e0), whose other expert is e2 itself: d2 {0,0}, d1 keeps {1,2}:
    #   e0 60 per replica: [120, 80+40, 120, 40+40] = [120, 120, 120, 80]; max 160 -> 120: kept.
    # Round 3: per replica 60, 40, 80, 40: hot e2, donor e1; d1 {2,2}: [120, 80, 120, 120], neither max nor max/min
    #   (1.5) lower: rejected, so the layout is a fixed point.
    loads = np.zeros((4, 4), dtype=np.int64)
    loads[0] = [240, 80, 80, 40]
    one = make_planner("flexmoe", 4, 2, 4, max_moves=1)
    np.testing.assert_array_equal(one.static_layout(4), [[0, 2], [1, 3], [0, 2], [1, 3]])
    first = one.plan(loads)
    np.testing.assert_array_equal(first.layout.slots, [[0, 0], [1, 2], [0, 2], [1, 3]])
    np.testing.assert_array_equal(first.device_tokens, [160, 80, 120, 80])
    # The next plan starts from the layout the first left, not from the static one.
    second = make_planner("flexmoe", 4, 2, 4, max_moves=1, start=first.layout.slots).plan(loads)
    np.testing.assert_array_equal(second.layout.slots, [[0, 0], [1, 2], [0, 0], [1, 3]])
    np.testing.assert_array_equal(second.device_tokens, [120, 120, 120, 80])
    np.testing.assert_array_equal(one.step(loads, second.layout.slots).layout.slots, second.layout.slots)
    # Two rounds in one plan reach the same layout; a planner keeps no state between plans (a start per layer is one
    # planner per layer: tests/training/test_sim.py).
    np.testing.assert_array_equal(make_planner("flexmoe", 4, 2, 4).plan(loads).layout.slots, second.layout.slots)
    for _ in range(2):
        np.testing.assert_array_equal(one.plan(loads).layout.slots, first.layout.slots)


def test_flexmoe_bad_start_clear_errors():
    with pytest.raises(ValueError, match="start must be an integer layout"):
        make_planner("flexmoe", 4, 2, 4, start=np.zeros((4, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="hold every one"):
        make_planner("flexmoe", 4, 2, 4, start=np.zeros((4, 2), dtype=np.int64)).plan(np.ones((4, 4), dtype=np.int64))
