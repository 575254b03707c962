"""The compiled planner loops (`training/planner/kernels.py`, the FSEP sums in `training/routing.py`) against plain
references written here: Python loops of the same greedy, brute force, and the numpy formula of the expected split.

Also the facts the fast path relies on: numba's copy of numpy's float summation, and the margin that lets LAER+ skip
the exact score of layouts that cannot win.
"""

from __future__ import annotations

import numpy as np
import pytest

from training.placement import Placement
from training.planner import PlanObjective, add_replicas, make_planner
from training.planner.eplb import balanced_packing, eplb_placement
from training.planner.kernels import warm_up
from training.planner.lpt import PlacementRule, lpt_place, priority_replicas
from training.routing import fsep_expected, fsep_routing, fsep_summaries, fsep_summary, numpy_sum, traffic_summary


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


FREE = PlacementRule.FREE_NODES
KINDS = ["random", "zero", "hot_expert", "hot_source", "ties"]


def _random_slots(rng, n, c, e):
    slots = rng.integers(0, e, (n, c))
    slots.ravel()[:e] = rng.permutation(e)  # every expert at least once
    return slots


# Plain references ---------------------------------------------------------------------------------------------------
def add_replicas_reference(w, r, extra):
    r = np.array(r, dtype=np.int64)
    for _ in range(extra):
        r[np.argmax(w / r)] += 1
    return r


def lpt_reference(w, r, n, c, g):
    """`PlacementRule.FREE_NODES`: instance by instance over all devices, heaviest load per replica first (stable),
    key (copies of the expert on the device's node, device load, device id) over the free devices."""
    per_rep = np.asarray(w, dtype=float) / np.maximum(r, 1)
    load, free, slots = [0.0] * n, [c] * n, [[] for _ in range(n)]
    for j in np.argsort(-per_rep, kind="stable"):
        copies = [0] * (n // g)
        for _ in range(int(r[j])):
            d = min((copies[d // g], load[d], d) for d in range(n) if free[d])[2]
            slots[d].append(int(j))
            copies[d // g] += 1
            load[d] += per_rep[j]
            free[d] -= 1
    return np.array(slots)


def lpt_paper_reference(w, r, n, c, g):
    """`PlacementRule.PAPER` read literally: instance by instance, heaviest load per replica first (stable); the free
    devices on the nodes whose copies of the expert equal the minimum over all nodes, else every free device; the
    least-loaded of them, lower id on ties."""
    per_rep = np.asarray(w, dtype=float) / np.maximum(r, 1)
    load, free, slots = [0.0] * n, [c] * n, [[] for _ in range(n)]
    for j in np.argsort(-per_rep, kind="stable"):
        copies = [0] * (n // g)
        for _ in range(int(r[j])):
            fewest = [d for d in range(n) if free[d] and copies[d // g] == min(copies)]
            d = min(fewest or [d for d in range(n) if free[d]], key=lambda d: (load[d], d))
            slots[d].append(int(j))
            copies[d // g] += 1
            load[d] += per_rep[j]
            free[d] -= 1
    return np.array(slots)


def packing_reference(weights, num_packs):
    cap = weights.size // num_packs
    pack, load, count = np.empty(weights.size, dtype=np.int64), [0.0] * num_packs, [0] * num_packs
    for i in np.argsort(-weights, kind="stable"):
        p = min((load[q], q) for q in range(num_packs) if count[q] < cap)[1]
        pack[i], load[p], count[p] = p, load[p] + weights[i], count[p] + 1
    return pack


def eplb_reference(loads, n, c, g):
    """EPLB as published: groups (one per node) packed to nodes, then per node (all devices as one node when the
    groups do not fit) one replica each plus greedy increments, replicas packed to devices by balanced packing."""
    w = loads.sum(0).astype(float)
    e, k = w.size, n // g
    hierarchical = e % k == 0 and g * c >= e // k
    node_experts = [np.arange(e)]
    if hierarchical:
        size = e // k
        node_of_group = packing_reference(w.reshape(k, size).sum(1), k)
        node_experts = [np.concatenate([np.arange(q * size, (q + 1) * size) for q in np.flatnonzero(node_of_group == m)])
                        for m in range(k)]
    devs = g if hierarchical else n
    out = []
    for experts in node_experts:
        r = add_replicas_reference(w[experts], np.ones(experts.size), devs * c - experts.size)
        rep_expert, rep_w = np.repeat(experts, r), np.repeat(w[experts] / r, r)
        dev = packing_reference(rep_w, devs)
        out.append(rep_expert[np.argsort(dev, kind="stable")].reshape(devs, c))
    return np.concatenate(out)


def expected_reference(loads, slots, e, g):
    """The fractional FSEP split in numpy: (tokens, sent_intra, sent_inter) [N] and the spread bound."""
    loads = np.asarray(loads, dtype=float)
    n = loads.shape[0]
    k = n // g
    h = Placement(slots, e).holders()  # [E, N]
    h_node = h.reshape(e, k, g).sum(2).T  # [K, E]
    node_src = loads.reshape(k, g, e).sum(1)  # [K, E]
    local = h_node > 0
    nonlocal_tokens = np.where(local, 0.0, node_src).sum(0)  # [E] tokens from nodes without a replica
    per_local = np.where(local, node_src / np.maximum(h_node, 1), 0.0)  # [K, E] per local replica
    per_global = nonlocal_tokens / np.maximum(h.sum(1), 1)  # [E] per replica anywhere
    node = np.arange(n) // g
    tokens = (h * (per_local[node].T + per_global[:, None])).sum(0)
    loc = local[node]  # [N, E]
    kept = loads * h.T / np.maximum(h_node[node], 1)
    intra = np.where(loc, loads - kept, 0.0).sum(1)
    inter = np.where(loc, 0.0, loads).sum(1)
    nz = (loads > 0).reshape(k, g, e).sum(1).T  # [E, K] sources with tokens for j on node m
    nz_global = np.where(h_node.T == 0, nz, 0).sum(1)  # [E] sources feeding j's global list
    spread = int((h * (nz[:, node] + nz_global[:, None])).sum(0).max())
    return (tokens, intra, inter), spread


def expected_routing_loops(loads, slots, e, g):
    """[N, E, N] float fractional split, by the rule's words: x / (local replicas) to each local replica, else
    x / (all replicas) to each replica."""
    n = loads.shape[0]
    h = Placement(slots, e).holders()
    out = np.zeros((n, e, n))
    for i in range(n):
        for j in range(e):
            local = [d for d in range(n) if d // g == i // g]
            reps = [d for d in local for _ in range(h[j, d])] or [d for d in range(n) for _ in range(h[j, d])]
            for d in reps:
                out[i, j, d] += loads[i, j] / len(reps)
    return out


# Tests --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(20))
def test_greedy_steps_equal_plain_loops(seed):
    rng = np.random.default_rng(100 + seed)
    n, c, g, e, loads = _instance(rng, KINDS[seed % len(KINDS)])
    w = loads.sum(0).astype(float)
    r = add_replicas(w, np.ones(e), n * c - e)
    np.testing.assert_array_equal(r, add_replicas_reference(w, np.ones(e), n * c - e))
    np.testing.assert_array_equal(lpt_place(w, r, n, c, g, FREE), lpt_reference(w, r, n, c, g))
    np.testing.assert_array_equal(lpt_place(w, r, n, c, g), lpt_paper_reference(w, r, n, c, g))
    np.testing.assert_array_equal(eplb_placement(loads, n, c, g), eplb_reference(loads, n, c, g))
    items = rng.integers(0, 5, 4 * n).astype(float)  # ties on purpose
    np.testing.assert_array_equal(balanced_packing(items, n), packing_reference(items, n))


@pytest.mark.parametrize("seed", range(40))
def test_lpt_equals_plain_loop_small(seed):
    rng = np.random.default_rng(seed)
    g, k, c, e = int(rng.integers(1, 4)), int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(1, 6))
    n = g * k
    if n * c < e:
        c = -(-e // n)
    w = rng.integers(0, 100, e).astype(float)
    r = add_replicas_reference(w, np.ones(e), n * c - e)
    np.testing.assert_array_equal(lpt_place(w, r, n, c, g, FREE), lpt_reference(w, r, n, c, g))
    np.testing.assert_array_equal(lpt_place(w, r, n, c, g), lpt_paper_reference(w, r, n, c, g))


@pytest.mark.parametrize("seed", range(20))
def test_priority_queue_equals_linear_scan(seed):
    # The paper's queue against its rule read literally: grow the argmax of load per replica among the experts still
    # in the queue, +1 below #nodes replicas, else +#nodes, and drop an expert whose +#nodes no longer fits.
    rng = np.random.default_rng(300 + seed)
    n, c, g, e, loads = _instance(rng, KINDS[seed % len(KINDS)])
    w, k = loads.sum(0).astype(float), n // g
    r = np.full(e, k if k * e <= n * c else 1)
    queue = list(range(e))
    while (left := n * c - r.sum()) > 0:
        j = max(queue, key=lambda q: (w[q] / r[q], -q))
        if r[j] < k:
            r[j] += 1
        elif k <= left:
            r[j] += k
        else:
            queue.remove(j)
    np.testing.assert_array_equal(priority_replicas(w, n * c, k), r)


@pytest.mark.parametrize("seed", range(20))
def test_fsep_sums_equal_the_rule(seed):
    rng = np.random.default_rng(200 + seed)
    n, c, g, e, loads = _instance(rng, KINDS[seed % len(KINDS)])
    layouts = np.stack([_random_slots(rng, n, c, e) for _ in range(3)])
    # A trial as LAER+'s local search makes them: placement 0 with two slots swapped (the kernel reuses its sums).
    layouts[1] = layouts[0]
    a, b = rng.integers(0, n * c, 2)
    layouts[1].ravel()[[a, b]] = layouts[1].ravel()[[b, a]]
    exact = fsep_summaries(loads, layouts, g)
    expected, spread = fsep_expected(loads, layouts, e, g)
    for t, slots in enumerate(layouts):
        want = traffic_summary(fsep_routing(loads, Placement(slots, e), g), g)
        for got, ref in zip(exact, want):
            np.testing.assert_array_equal(got[t], ref)
        (tokens, intra, inter), ref_spread = expected_reference(loads, slots, e, g)
        for got, ref in zip(expected, (tokens, intra, inter)):
            np.testing.assert_array_equal(got[t], ref)  # bit for bit: the numpy formula's sums, in numpy's order
        assert spread[t] == ref_spread
        if n <= 16:
            loops = traffic_summary(expected_routing_loops(loads, slots, e, g), g)
            for got, ref in zip(expected, loops):
                np.testing.assert_allclose(got[t], ref, rtol=1e-12, atol=1e-9)


def test_numpy_sum_copy_is_exact():
    # The expected split reproduces numpy's summation order; if numpy ever changed it, this fails (not drifts).
    rng = np.random.default_rng(0)
    for size in [*range(0, 300), 511, 512, 513, 1000, 1024, 1500, 4096]:
        a = rng.random(size) * 10.0 ** rng.integers(-3, 7)
        assert numpy_sum(a) == a.sum(), size
        assert numpy_sum(a) == np.stack([a, a]).sum(1)[1], size  # row sums, as in [T, N] arrays


def test_expected_margin_bounds_exact_objective():
    # LAER+ skips the exact score of a layout whose expected objective minus its margin exceeds another's plus its
    # margin; that is only sound if |exact - expected| <= margin always. Adversarial remainders: tiny loads, many
    # sources, replicas spread over nodes.
    rng = np.random.default_rng(7)
    worst = 0.0
    for trial in range(150):
        n, c, g, e, loads = _instance(rng, KINDS[trial % len(KINDS)])
        if trial % 3 == 0:
            loads = rng.integers(0, 4, (n, e))  # remainders dominate
        slots = _random_slots(rng, n, c, e)
        planner = make_planner("laer_plus", n, c, g)
        exact, _ = planner.score(loads, slots)
        est = planner.expected_score(loads, slots)
        assert abs(exact - est.objective) <= est.margin, trial
        tokens = fsep_summary(loads, Placement(slots, e), g).device_tokens
        expected, spread = fsep_expected(loads, slots[None], e, g)
        assert np.all(np.abs(tokens - expected.device_tokens[0]) <= spread[0])
        worst = max(worst, abs(exact - est.objective) / max(est.margin, 1e-300))
    assert worst > 0.05  # the cases are not trivially far inside the bound


def test_kernels_refuse_bad_slots():
    loads = np.ones((4, 3), dtype=np.int64)
    planner = make_planner("laer", 4, 1, 2)
    with pytest.raises(ValueError, match="outside"):
        planner.score(loads, np.array([[0], [1], [2], [3]]))
    with pytest.raises(ValueError, match="outside"):
        planner.expected_score(loads, np.array([[0], [1], [-1], [2]]))
    with pytest.raises(ValueError, match="no replica"):
        planner.score(loads, np.array([[0], [1], [1], [0]]))


def test_warm_up():
    assert warm_up() >= 0.0



def test_objectives_equal_the_formula():
    # 4 * sum_i T_comm[i] + compute factor * per-token time * max_i tokens, written out with numpy.
    rng = np.random.default_rng(5)
    for recompute in (False, True):
        cost = PlanObjective(token_bytes=2.0 * 4096, per_token_s=3e-7, intra_bw=3e11, inter_bw=2.5e10,
                             recompute=recompute)
        tokens, intra, inter = (rng.integers(0, 10_000, (6, 64)) for _ in range(3))
        comm = cost.token_bytes * (intra / cost.intra_bw + inter / cost.inter_bw)
        want = 4.0 * comm.sum(1) + (4.0 if recompute else 3.0) * cost.per_token_s * tokens.max(1)
        np.testing.assert_array_equal(cost.objectives(tokens, intra, inter), want)
        np.testing.assert_array_equal(cost.objectives(*(x.astype(float) for x in (tokens, intra, inter))), want)
        assert cost.objective(tokens[2], intra[2], inter[2]) == want[2]
