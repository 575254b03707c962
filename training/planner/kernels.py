"""The greedy planners' inner loops, compiled with numba: the one implementation of each (tests compare them with
plain references in tests/). Measured on the paper's Fig. 11 grid, each is what keeps a planner at or under the paper's
solve time at some (N, C) point (at N = 64 the paper's times are half a millisecond, where a Python loop of a few
hundred steps already costs that much). The FSEP sums that score layouts are compiled beside the rule, in
`training.routing`.

Notation: N devices, E experts, C slots per device, G devices per node, K = N / G nodes, r [E] replica counts.

`cache=True` keeps the machine code on disk, so only the first process on a machine pays the compile time
(`warm_up` does that up front). nogil: the async planner's worker thread runs beside training.
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit

from training.routing import numpy_sum

compiled = njit(cache=True, nogil=True)


@compiled
def max_load_per_replica(w: np.ndarray, r: np.ndarray) -> int:
    """argmax_j w_j / r_j, ties to the lower id."""
    j = 0
    best = w[0] / r[0]
    for q in range(1, w.size):
        v = w[q] / r[q]
        if v > best:
            best = v
            j = q
    return j


@compiled
def priority_counts(w: np.ndarray, total: int, k: int) -> np.ndarray:
    """`lpt.priority_replicas` (the paper's priority queue): a linear scan over E experts per step in place of a heap;
    the max of load per replica with ties to the lower expert id is what the heap of (-w_j / r_j, j) pops. An expert
    whose +K step no longer fits leaves the queue for good (`done`)."""
    e = w.size
    start = k if k * e <= total else 1
    r = np.full(e, start, dtype=np.int64)
    done = np.zeros(e, dtype=np.bool_)
    left = total - start * e
    # Terminates: an expert with r < K always grows by 1, and not every expert can hold >= K replicas while slots
    # are left (start = K leaves a multiple of K; start = 1 means K * E > total).
    while left > 0:
        j = -1
        best = 0.0
        for q in range(e):
            if not done[q]:
                v = w[q] / r[q]
                if j < 0 or v > best:
                    best = v
                    j = q
        if r[j] < k:
            r[j] += 1
            left -= 1
        elif k <= left:
            r[j] += k
            left -= k
        else:
            done[j] = True
    return r


@compiled
def greedy_increments(w: np.ndarray, r: np.ndarray, extra: int) -> np.ndarray:
    """`extra` times: one more replica to the expert with the highest w_j / r_j (ties: lower id); r is updated in
    place and returned. `bound.add_replicas` is its entry point."""
    for _ in range(extra):
        r[max_load_per_replica(w, r)] += 1
    return r


@compiled
def lpt_slots(per_rep: np.ndarray, r: np.ndarray, n: int, c: int, g: int) -> np.ndarray:
    """`lpt.lpt_place`: replica instances of each expert (heaviest per replica first; a stable sort, so ties keep
    expert order) go round by round to the nodes with the fewest copies of it, each to its least-loaded free device
    (ties: lower device id); when fewer replicas are left than candidate nodes, the nodes whose best free device is
    lightest (then lower id) take them. Within a round the chosen nodes are distinct, so this is the
    instance-by-instance greedy with key (copies on the node, device load, device id)."""
    k = n // g
    load = np.zeros(n)
    free = np.full(n, c, dtype=np.int64)
    node_free = np.full(k, g * c, dtype=np.int64)
    slots = np.empty((n, c), dtype=np.int64)
    copies = np.zeros(k, dtype=np.int64)
    cand = np.empty(k, dtype=np.int64)
    cand_dev = np.empty(k, dtype=np.int64)
    cand_load = np.empty(k)
    for j in np.argsort(-per_rep, kind="mergesort"):
        wj = per_rep[j]
        copies[:] = 0
        left = r[j]
        while left > 0:
            cmin = 1 << 62
            for m in range(k):
                if node_free[m] > 0 and copies[m] < cmin:
                    cmin = copies[m]
            nc = 0
            for m in range(k):
                if node_free[m] > 0 and copies[m] == cmin:
                    best = -1
                    for d in range(m * g, (m + 1) * g):  # least-loaded free device, lower id on ties
                        if free[d] > 0 and (best < 0 or load[d] < load[best]):
                            best = d
                    cand[nc] = m
                    cand_dev[nc] = best
                    cand_load[nc] = load[best]
                    nc += 1
            take = nc
            if nc > left:
                take = left
                # Stable on load: candidates are in node order, so ties go to the lower device id.
                pick = np.argsort(cand_load[:nc], kind="mergesort")[:take]
            else:
                pick = np.arange(nc)
            for t in pick:
                m, d = cand[t], cand_dev[t]
                slots[d, c - free[d]] = j
                free[d] -= 1
                node_free[m] -= 1
                load[d] += wj
                copies[m] += 1
            left -= take
    return slots


@compiled
def lpt_slots_paper(per_rep: np.ndarray, r: np.ndarray, n: int, c: int, g: int) -> np.ndarray:
    """`lpt.lpt_place` with `PlacementRule.PAPER`: replica instances of each expert (heaviest per replica first, a
    stable sort, so ties keep expert order and an expert's instances stay together) one by one: the nodes with the
    fewest copies of the expert over all nodes, full ones included; the least-loaded free device on them (ties: lower
    device id); if they are all full, the least-loaded free device anywhere."""
    k = n // g
    load = np.zeros(n)
    free = np.full(n, c, dtype=np.int64)
    slots = np.empty((n, c), dtype=np.int64)
    copies = np.zeros(k, dtype=np.int64)
    for j in np.argsort(-per_rep, kind="mergesort"):
        wj = per_rep[j]
        copies[:] = 0
        for _ in range(r[j]):
            cmin = copies.min()
            best = -1
            for m in range(k):
                if copies[m] == cmin:
                    for d in range(m * g, (m + 1) * g):
                        if free[d] > 0 and (best < 0 or load[d] < load[best]):
                            best = d
            if best < 0:  # every node with the fewest copies is full: the fallback
                for d in range(n):
                    if free[d] > 0 and (best < 0 or load[d] < load[best]):
                        best = d
            slots[best, c - free[best]] = j
            free[best] -= 1
            load[best] += wj
            copies[best // g] += 1
    return slots


@compiled
def objectives(tokens: np.ndarray, intra: np.ndarray, inter: np.ndarray, params: np.ndarray) -> np.ndarray:
    """`objective.PlanObjective.objectives` of traffic [T, N] (int64 or float64): [T] float64. params =
    [token_bytes, intra_bw, inter_bw, compute_factor * per_token_s]. Compiled because the planners score a few
    layouts per plan and nine numpy operations per call cost as much as the FSEP sums themselves at N = 64."""
    nt, n = tokens.shape
    out = np.empty(nt)
    comm = np.empty(n)
    for t in range(nt):
        for i in range(n):
            comm[i] = params[0] * (intra[t, i] / params[1] + inter[t, i] / params[2])
        out[t] = 4.0 * numpy_sum(comm) + params[3] * tokens[t].max()
    return out


@compiled
def pack_balanced(weights: np.ndarray, order: np.ndarray, num_packs: int) -> np.ndarray:
    """`eplb.balanced_packing`: items in `order` each to the lightest pack that is not full (ties: lower pack)."""
    cap = weights.size // num_packs
    pack = np.empty(weights.size, dtype=np.int64)
    load = np.zeros(num_packs)
    count = np.zeros(num_packs, dtype=np.int64)
    for i in order:
        p = -1
        for q in range(num_packs):
            if count[q] < cap and (p < 0 or load[q] < load[p]):
                p = q
        pack[i] = p
        load[p] += weights[i]
        count[p] += 1
    return pack


@compiled
def eplb_node_layouts(w: np.ndarray, node_of_group: np.ndarray, size: int, k: int, g: int, c: int) -> np.ndarray:
    """Steps 2 and 3 of `eplb.eplb_placement`: for each of the K nodes, its groups' experts (ascending) get one
    replica each and the node's other slots by `greedy_increments`; the replicas (weight w / r, heaviest first) are
    packed to the node's G devices with C each (`pack_balanced`), in device order. [K*G, C]."""
    slots = np.empty((k * g, c), dtype=np.int64)
    for m in range(k):
        ng = 0
        for q in range(node_of_group.size):
            if node_of_group[q] == m:
                ng += 1
        experts = np.empty(ng * size, dtype=np.int64)
        t = 0
        for q in range(node_of_group.size):
            if node_of_group[q] == m:
                for u in range(size):
                    experts[t] = q * size + u
                    t += 1
        wm = w[experts]
        r = greedy_increments(wm, np.ones(experts.size, dtype=np.int64), g * c - experts.size)
        rep_expert = np.repeat(experts, r)
        rep_w = np.repeat(wm / r, r)
        dev = pack_balanced(rep_w, np.argsort(-rep_w, kind="mergesort"), g)
        slots[m * g:(m + 1) * g] = rep_expert[np.argsort(dev, kind="mergesort")].reshape(g, c)
    return slots


def warm_up() -> float:
    """Compile every planner loop (these and the FSEP sums of `training.routing`), or load it from numba's disk
    cache, on a tiny instance; the seconds it took. Planning does this implicitly on first use; benchmarks call it to
    time compilation apart from solving."""
    from training.routing import fsep_expected, fsep_summaries

    t0 = time.perf_counter()
    w = np.arange(1.0, 5.0)
    r = priority_counts(w, 8, 2)
    greedy_increments(w, np.ones(4, dtype=np.int64), 4)
    slots = lpt_slots(w / r, r, 4, 2, 2)
    lpt_slots_paper(w / r, r, 4, 2, 2)
    exact = fsep_summaries(np.ones((4, 4), dtype=np.int64), slots[None], 2)
    expected, _ = fsep_expected(np.ones((4, 4), dtype=np.int64), slots[None], 4, 2)
    objectives(*exact, np.ones(4))
    objectives(*expected, np.ones(4))
    pack_balanced(w, np.arange(4), 2)
    eplb_node_layouts(w, np.arange(2), 2, 2, 2, 2)
    return time.perf_counter() - t0
