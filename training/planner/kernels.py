"""Compiled inner loops of the greedy planners (numba); the numpy implementations stay the reference and fallback.

Notation: N devices, E experts, C slots per device, G devices per node, K = N / G nodes, r [E] replica counts,
h [E, N] replicas of expert j on device d, T placements scored in one call.

Each kernel reproduces one numpy/heap implementation step for step (same tie-breaking; where a result is a float,
the same operations in the same order, and the float sums over experts are left to numpy), so a plan is the same
with or without numba; tests check it on random and adversarial loads. In Python these loops cost a few hundred
microseconds per plan, compiled a few microseconds. This module imports numba, so the planner imports it only on
first use (`accel.kernels()`); `cache=True` keeps the machine code on disk, so only the first process on a machine
pays the compile time (`accel.warm_up()` does that up front). nogil: the async planner's worker thread runs beside
training.
"""

from __future__ import annotations

import numpy as np
from numba import njit

compiled = njit(cache=True, nogil=True)


@compiled
def max_load_per_replica(w: np.ndarray, r: np.ndarray) -> int:
    """argmax_j w_j / r_j, ties to the lower id (as np.argmax and a heap of (-w_j / r_j, j) both give)."""
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
    """`lpt.priority_replicas` (the paper's priority queue): a linear scan replaces the heap; the max of load per
    replica with ties to the lower expert id is what the heap of (-w_j / r_j, j) pops."""
    e = w.size
    start = k if k * e <= total else 1
    r = np.full(e, start, dtype=np.int64)
    left = total - start * e
    while left > 0:
        j = max_load_per_replica(w, r)
        step = k if r[j] >= k else 1
        if step > left:
            step = left
        r[j] += step
        left -= step
    return r


@compiled
def greedy_increments(w: np.ndarray, r: np.ndarray, extra: int) -> np.ndarray:
    """`extra` times: one more replica to the expert with the highest w_j / r_j (ties: lower id, as np.argmax).
    The greedy step of `bound.waterfill_replicas` and `eplb.replicate`; r is updated in place and returned."""
    for _ in range(extra):
        r[max_load_per_replica(w, r)] += 1
    return r


@compiled
def lpt_slots(per_rep: np.ndarray, r: np.ndarray, n: int, c: int, g: int) -> np.ndarray:
    """`lpt._lpt_heaps` / `_lpt_rounds`: replica instances of each expert (heaviest per replica first; a stable
    sort, so ties keep expert order) go round by round to the
    nodes with the fewest copies of it, each to its least-loaded free device (ties: lower device id); when fewer
    replicas are left than candidate nodes, the nodes whose best free device is lightest (then lower id) take them."""
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
def fsep_summary_counts(loads: np.ndarray, slots: np.ndarray, g: int):
    """`placement.fsep_summary` (the exact integer FSEP split) of T placements slots [T, N, C] in O(N*E + N*C) loops
    each: (device_tokens, sent_intra, sent_inter) [T, N] int64, and bad [T, 2]: the first (source, expert) with tokens
    but no replica, (-1, -1) when none, (-2, slot) when a slot holds an id outside [0, E).

    1. Each (source i, expert j) sends to the replica list of j on i's node if it has one, else of j everywhere;
       lists are device-major. floor(load / r) goes to every replica (summed per list first), one extra token to
       each of a cyclic run of `rem` positions from i mod r (a difference array per list).
    2. Walk every list once to turn base sums and extras into device tokens.
    3. A source keeps base times its own replicas plus the extras on its own positions of the local list.
    """
    n, e = loads.shape
    k = n // g
    nt, c = slots.shape[0], slots.shape[2]
    tokens_b = np.zeros((nt, n), dtype=np.int64)
    intra_b = np.zeros((nt, n), dtype=np.int64)
    inter_b = np.zeros((nt, n), dtype=np.int64)
    bad = np.full((nt, 2), -1, dtype=np.int64)
    for t in range(nt):
        h = np.zeros((e, n), dtype=np.int64)  # [E, N]
        h_node = np.zeros((e, k), dtype=np.int64)  # [E, K]
        r_all = np.zeros(e, dtype=np.int64)  # [E]
        for d in range(n):
            for s in range(c):
                v = slots[t, d, s]
                if v < 0 or v >= e:  # no bounds checks in compiled code: refuse the placement instead
                    bad[t, 0], bad[t, 1] = -2, d * c + s
                else:
                    h[v, d] += 1
                    h_node[v, d // g] += 1
                    r_all[v] += 1
        if bad[t, 0] == -2:
            continue
        # List offsets: local list (m, j) at m * E + j, global list of j at K * E + j; each gets one slack cell.
        groups = k * e + e
        offs = np.zeros(groups + 1, dtype=np.int64)
        for q in range(groups):
            length = h_node[q % e, q // e] if q < k * e else r_all[q - k * e]
            offs[q + 1] = offs[q] + length + 1
        diff = np.zeros(offs[groups], dtype=np.int64)
        base_sum = np.zeros(groups, dtype=np.int64)
        tokens, intra, inter = tokens_b[t], intra_b[t], inter_b[t]
        # Step 1 (and 3), per (expert, node): the node's sources in device order, so `before` (positions of the
        # local list on devices before i) is a running sum.
        for j in range(e):
            for m in range(k):
                local = h_node[j, m] > 0
                q = m * e + j if local else k * e + j
                rr = h_node[j, m] if local else r_all[j]
                before = 0
                for i in range(m * g, (m + 1) * g):
                    x = loads[i, j]
                    own = h[j, i]
                    if x > 0 and rr == 0:
                        if bad[t, 0] < 0 or i < bad[t, 0] or (i == bad[t, 0] and j < bad[t, 1]):
                            bad[t, 0], bad[t, 1] = i, j
                    elif x > 0:
                        base = x // rr
                        rem = x - base * rr
                        base_sum[q] += base
                        start = i % rr if rem > 0 else 0
                        end = start + rem
                        if rem > 0:
                            o = offs[q]
                            diff[o + start] += 1
                            if end <= rr:
                                diff[o + end] -= 1
                            else:
                                diff[o + rr] -= 1
                                diff[o] += 1
                                diff[o + end - rr] -= 1
                        if local:
                            # Step 3: extras among positions [0, x) for the cyclic run [start, end) mod rr, at
                            # x = before + own and x = before; i's own positions are [before, before + own).
                            x1 = before + own
                            kept = (base * own + max(0, min(x1, end) - start) + max(0, min(x1, end - rr))
                                    - max(0, min(before, end) - start) - max(0, min(before, end - rr)))
                            intra[i] += x - kept
                        else:
                            inter[i] += x
                    before += own
        # Step 2: walk the lists (local lists cover node m's devices, global lists all devices), device-major.
        for q in range(groups):
            j = q % e if q < k * e else q - k * e
            lo, hi = ((q // e) * g, (q // e + 1) * g) if q < k * e else (0, n)
            pos = offs[q]
            run = 0
            for d in range(lo, hi):
                cnt = h[j, d]
                if cnt == 0:
                    continue
                tokens[d] += base_sum[q] * cnt
                for _ in range(cnt):
                    run += diff[pos]
                    tokens[d] += run
                    pos += 1
    return tokens_b, intra_b, inter_b, bad


@compiled
def _pairwise(a: np.ndarray) -> float:
    if a.size < 8:
        res = 0.0
        for i in range(a.size):
            res += a[i]
        return res
    if a.size <= 128:
        r0, r1, r2, r3, r4, r5, r6, r7 = a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
        i = 8
        while i < a.size - a.size % 8:
            r0 += a[i]
            r1 += a[i + 1]
            r2 += a[i + 2]
            r3 += a[i + 3]
            r4 += a[i + 4]
            r5 += a[i + 5]
            r6 += a[i + 6]
            r7 += a[i + 7]
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < a.size:
            res += a[i]
            i += 1
        return res
    half = a.size // 2
    half -= half % 8
    return _pairwise(a[:half]) + _pairwise(a[half:])


@compiled
def numpy_sum(a: np.ndarray) -> float:
    """What numpy returns for the sum of a contiguous 1-D float64 array (np.add.reduce: the identity 0.0 plus a
    pairwise sum in blocks of 128 with 8 accumulators), so compiled objectives equal numpy's bit for bit. A test
    checks it against numpy on random arrays of many lengths (it would fail, not drift, if numpy changed)."""
    return 0.0 + _pairwise(a)


@compiled
def objective_from(tokens: np.ndarray, intra: np.ndarray, inter: np.ndarray, cost: np.ndarray) -> float:
    """`PlanCost.objective` with the same operations in the same order. cost = [token_bytes, intra_bw, inter_bw,
    compute_factor * per_token_s]."""
    comm = np.empty(tokens.size)
    for i in range(tokens.size):
        comm[i] = cost[0] * (intra[i] / cost[1] + inter[i] / cost[2])
    return 4.0 * numpy_sum(comm) + cost[3] * tokens.max()


@compiled
def count_objectives(tokens: np.ndarray, intra: np.ndarray, inter: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """[T] `objective_from` of the integer summaries [T, N] of `fsep_summary_counts`."""
    out = np.empty(tokens.shape[0])
    for t in range(tokens.shape[0]):
        out[t] = objective_from(tokens[t].astype(np.float64), intra[t].astype(np.float64),
                                inter[t].astype(np.float64), cost)
    return out


@compiled
def fsep_expected_costs(loads: np.ndarray, slots: np.ndarray, e: int, g: int, cost: np.ndarray):
    """`placement.fsep_expected` (the fractional even split) of T placements [T, N, C] and its objective:
    objective [T], tokens, sent_intra, sent_inter [T, N] float, spread [T] = max_d of the sources feeding d's replica
    lists (`placement.fsep_expected_spread`), bad [T, 2] as in `fsep_summary_counts` (-2 only). cost: see
    `objective_from`.

    Float results equal `fsep_expected` + `PlanCost.objective` bit for bit (tests check it): every term is the same
    IEEE operation on the same operands; tokens are summed over experts in index order, which is how numpy sums a
    C-ordered [E, N] array along axis 0 (the zero terms it also adds change nothing); sums along a row use
    `numpy_sum`.

    Local-search trials differ from placement 0 on a few devices: a source's sent tokens depend only on its own
    device's and its node's replicas, so sources on nodes laid out as in placement 0 reuse its sums; the rest is
    O(N*C + K*E) per placement.
    """
    n = loads.shape[0]
    k = n // g
    nt, c = slots.shape[0], slots.shape[2]
    node_src = np.zeros((k, e))  # [K, E] integer-valued, so any summation order is exact
    node_nz = np.zeros((k, e), dtype=np.int64)  # [K, E] sources of node m with tokens for j
    for d in range(n):
        for j in range(e):
            node_src[d // g, j] += loads[d, j]
            if loads[d, j] > 0:
                node_nz[d // g, j] += 1
    obj_b = np.zeros(nt)
    tok_b = np.zeros((nt, n))
    intra_b = np.zeros((nt, n))
    inter_b = np.zeros((nt, n))
    spread_b = np.zeros(nt, dtype=np.int64)
    bad = np.full((nt, 2), -1, dtype=np.int64)
    h_node = np.zeros((k, e), dtype=np.int64)  # [K, E] replicas of j on node m
    r_all = np.zeros(e, dtype=np.int64)
    per_local = np.zeros((k, e))
    per_global = np.zeros(e)
    nz_global = np.zeros(e, dtype=np.int64)
    own = np.zeros(e, dtype=np.int64)  # replicas of j on one device
    row = np.zeros(e)  # one source's intra-node sends per expert, summed as numpy sums a row
    srt = np.zeros(c, dtype=np.int64)
    for t in range(nt):
        h_node[:] = 0
        r_all[:] = 0
        for d in range(n):
            for s in range(c):
                v = slots[t, d, s]
                if v < 0 or v >= e:  # no bounds checks in compiled code: refuse the placement instead
                    bad[t, 0], bad[t, 1] = -2, d * c + s
                else:
                    h_node[d // g, v] += 1
                    r_all[v] += 1
        if bad[t, 0] == -2:
            continue
        for j in range(e):
            nonlocal_tokens = 0.0
            nz_global[j] = 0
            for m in range(k):
                if h_node[m, j] > 0:
                    per_local[m, j] = node_src[m, j] / h_node[m, j]
                else:
                    per_local[m, j] = 0.0
                    nonlocal_tokens += node_src[m, j]
                    nz_global[j] += node_nz[m, j]
            per_global[j] = nonlocal_tokens / max(r_all[j], 1)
        # Device tokens: h[j, d] * (per_local + per_global) over d's distinct experts in increasing id.
        for d in range(n):
            m = d // g
            for s in range(c):  # insertion sort: C is small
                v = slots[t, d, s]
                q = s
                while q > 0 and srt[q - 1] > v:
                    srt[q] = srt[q - 1]
                    q -= 1
                srt[q] = v
            acc = 0.0
            spread = 0
            s = 0
            while s < c:
                j = srt[s]
                cnt = 1
                while s + cnt < c and srt[s + cnt] == j:
                    cnt += 1
                acc += cnt * (per_local[m, j] + per_global[j])
                spread += cnt * (node_nz[m, j] + nz_global[j])
                s += cnt
            tok_b[t, d] = acc
            spread_b[t] = max(spread_b[t], spread)
        for m in range(k):
            same = t > 0 and bad[0, 0] != -2
            for d in range(m * g, (m + 1) * g):
                for s in range(c):
                    if same and slots[t, d, s] != slots[0, d, s]:
                        same = False
            for i in range(m * g, (m + 1) * g):
                if same:
                    intra_b[t, i], inter_b[t, i] = intra_b[0, i], inter_b[0, i]
                    continue
                own[:] = 0
                for s in range(c):
                    own[slots[t, i, s]] += 1
                for j in range(e):
                    x = float(loads[i, j])
                    if h_node[m, j] == 0:
                        inter_b[t, i] += x
                        row[j] = 0.0
                    elif own[j] > 0:
                        row[j] = x - x * own[j] / h_node[m, j]
                    else:
                        row[j] = x  # x - (x * 0) / h_node
                intra_b[t, i] = numpy_sum(row)
        obj_b[t] = objective_from(tok_b[t], intra_b[t], inter_b[t], cost)
    return obj_b, tok_b, intra_b, inter_b, spread_b, bad


def _check(bad: np.ndarray, slots: np.ndarray) -> None:
    if (bad[:, 0] == -1).all():
        return
    for t, (i, j) in enumerate(bad.tolist()):
        if i == -2:
            d, c = divmod(j, slots.shape[2])
            raise ValueError(f"placement {t}: slot [{d}, {c}] holds expert {slots[t, d, c]}, outside [0, E)")
        if i >= 0:
            raise ValueError(f"expert {j} receives tokens from device {i} but has no replica")


def exact_costs(loads: np.ndarray, slots: np.ndarray, g: int, cost: np.ndarray):
    """`placement.fsep_summary` of placements [T, N, C] (loads [N, E] int64) and the objective: objective [T],
    tokens, sent_intra, sent_inter [T, N] int64. cost: see `objective_from`."""
    slots = np.ascontiguousarray(slots, dtype=np.int64)
    loads = np.ascontiguousarray(loads, dtype=np.int64)  # integer token counts (no copy when they already are)
    tokens, intra, inter, bad = fsep_summary_counts(loads, slots, g)
    _check(bad, slots)
    return count_objectives(tokens, intra, inter, cost), tokens, intra, inter


def expected_costs(loads: np.ndarray, slots: np.ndarray, e: int, g: int, cost: np.ndarray):
    """`fsep_expected_costs` with its input checks: objective [T], tokens, sent_intra, sent_inter [T, N], spread [T]."""
    slots = np.ascontiguousarray(slots, dtype=np.int64)
    loads = np.ascontiguousarray(loads, dtype=np.int64)
    obj, tokens, intra, inter, spread, bad = fsep_expected_costs(loads, slots, e, g, cost)
    _check(bad, slots)
    return obj, tokens, intra, inter, spread


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
    """The per-node steps of `eplb.eplb_placement` (hierarchical): for each node, its groups' experts (ascending),
    replicated within the node (`eplb.replicate`) and packed to its G devices (`eplb._pack_replicas`). [K*G, C]."""
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
