"""The FSEP routing rule, the contract between planner and runtime: how a source device's tokens for an expert split
over the expert's replicas (node-local replicas first), and what that split costs in traffic.

Notation: N devices, E experts, C expert slots per device, G devices per node, K = N / G nodes.
loads[i, j]: tokens from source device i for expert j; routing[i, j, d]: those of them computed on device d.

The runtime calls `split_row` (the rule for its own row) or `split_row_by_weights` (a planner's explicit proportions);
`traffic_summary` is the one definition of a routing's device tokens and sent tokens. The planner scores candidate
layouts with the sums of the rule, `fsep_summaries` (exact) and `fsep_expected` (fractional, cheaper), without
building [N, E, N] tensors: loops compiled with numba (measured to be what keeps the planners within the paper's solve
times), equal to `traffic_summary(fsep_routing(...))` (tests check it). Float sums along a row are taken in numpy's
order (`numpy_sum`), so the expected objectives equal the vectorised numpy formula bit for bit. `cache=True` keeps
the machine code on disk (`training.planner.kernels.warm_up`); nogil: the async planner's worker thread runs beside
training.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from training.placement import Placement
from training.rounding import largest_remainder

compiled = njit(cache=True, nogil=True)


class Traffic(NamedTuple):
    """What a routing costs, per device [N]: integer for an integer routing, float for the fractional split."""

    device_tokens: np.ndarray  # tokens device d computes
    sent_intra: np.ndarray  # tokens source i sends to other devices of its node
    sent_inter: np.ndarray  # tokens source i sends to devices of other nodes


def traffic_summary(routing: np.ndarray, devices_per_node: int) -> Traffic:
    """The traffic of an explicit routing [N, E, N]."""
    traffic = np.asarray(routing).sum(1)  # [N, N] tokens from i computed on d
    n = traffic.shape[0]
    node = np.arange(n) // devices_per_node
    same = node[:, None] == node[None, :]
    off = ~np.eye(n, dtype=bool)
    return Traffic(traffic.sum(0), (traffic * (same & off)).sum(1), (traffic * ~same).sum(1))


def split_row(load_row: np.ndarray, placement: Placement, source: int, devices_per_node: int) -> np.ndarray:
    """The FSEP routing rule for one source device, per slot.

    Tokens from `source` for expert j split evenly over j's replicas (slots) on the source's node; if j has none there,
    evenly over all its replicas. A device holding two replicas of j gets two shares, one per slot.
    Integer split: each replica gets floor(load / r); the remainder goes one each to replicas (in device-major slot
    order) starting at an offset that rotates with the source device, so no replica is favoured systematically.

    load_row: [E] integer tokens from `source` routed to each expert.
    Returns [N, C] int64 tokens from `source` computed by each slot; its sum per expert equals load_row.
    """
    n, e = placement.num_devices, placement.num_experts
    load_row = np.asarray(load_row)
    if load_row.shape != (e,):
        raise ValueError(f"load row shape {load_row.shape} does not match placement ({e} experts)")
    if n % devices_per_node:
        raise ValueError(f"{n} devices do not split into nodes of {devices_per_node}")
    if not 0 <= source < n:
        raise ValueError(f"source device {source} outside [0, {n})")
    if np.any(load_row < 0):
        raise ValueError("loads must be non-negative")
    flat = placement.slots.ravel()  # [N*C] expert per slot, device-major
    slot_dev = np.arange(flat.size) // placement.slots_per_device
    local = slot_dev // devices_per_node == source // devices_per_node  # [N*C] slot on the source's node
    out = np.zeros(flat.size, dtype=np.int64)
    for j in np.flatnonzero(load_row):
        holds = flat == j
        eligible = np.flatnonzero(holds & local) if (holds & local).any() else np.flatnonzero(holds)
        if eligible.size == 0:
            raise ValueError(f"expert {j} receives tokens from device {source} but has no replica")
        r = eligible.size
        base, rem = divmod(int(load_row[j]), r)
        share = np.full(r, base, dtype=np.int64)
        share[(np.arange(rem) + source) % r] += 1
        out[eligible] = share
    return out.reshape(placement.slots.shape)


def split_row_by_weights(load_row: np.ndarray, weights: np.ndarray, placement: Placement, source: int) -> np.ndarray:
    """A planner's routing proportions turned into integer per-slot counts for one source device.

    load_row: [E] integer tokens from `source` per expert. weights: [E, N] non-negative proportions over devices
    (need not sum to 1; only devices holding the expert may have weight). Per expert:
      1. device counts: load * w / sum w by largest remainder (`training.rounding`; ties: lower device index), so
         the counts are deterministic and sum to the load;
      2. a device's count splits evenly over its slots holding the expert, remainder rotated by the source index.
    An expert with tokens but all-zero weights falls back to `split_row`'s even split over all its replicas.
    Returns [N, C] int64.
    """
    n, e, c = placement.num_devices, placement.num_experts, placement.slots_per_device
    load_row = np.asarray(load_row)
    weights = np.asarray(weights, dtype=np.float64)
    if load_row.shape != (e,) or weights.shape != (e, n):
        raise ValueError(f"load row {load_row.shape} / weights {weights.shape} do not match ({e},) / ({e}, {n})")
    holders = placement.holders()  # [E, N]
    out = np.zeros((n, c), dtype=np.int64)
    for j in np.flatnonzero(load_row):
        w = weights[j]
        if w.sum() <= 0:
            w = holders[j].astype(np.float64)
        if w.sum() <= 0:
            raise ValueError(f"expert {j} receives tokens from device {source} but has no replica")
        dev = largest_remainder(int(load_row[j]) * w / w.sum(), int(load_row[j]))  # Step 1
        for d in np.flatnonzero(dev):  # Step 2
            cs = np.flatnonzero(placement.slots[d] == j)
            base, r = divmod(int(dev[d]), cs.size)
            share = np.full(cs.size, base, dtype=np.int64)
            share[(np.arange(r) + source) % cs.size] += 1
            out[d, cs] = share
    return out


def fsep_routing(loads: np.ndarray, placement: Placement, devices_per_node: int) -> np.ndarray:
    """The FSEP routing rule over all source devices (see `split_row`, which the runtime calls for its own row).

    loads: [N, E] integer tokens from source device i routed to expert j.
    Returns routing [N, E, N] int64: tokens from i for j computed on device d; routing.sum(2) == loads.
    """
    loads = np.asarray(loads)
    n, e = placement.num_devices, placement.num_experts
    if loads.shape != (n, e):
        raise ValueError(f"loads shape {loads.shape} does not match placement ({n} devices, {e} experts)")
    routing = np.zeros((n, e, n), dtype=np.int64)
    dev_of_slot = np.repeat(np.arange(n), placement.slots_per_device)
    for i in range(n):
        per_slot = split_row(loads[i], placement, i, devices_per_node).ravel()  # [N*C]
        np.add.at(routing[i], (placement.slots.ravel(), dev_of_slot), per_slot)
    return routing


@compiled
def fsep_summary_counts(loads: np.ndarray, slots: np.ndarray, g: int):
    """The exact integer FSEP split (`fsep_routing`) of T placements [T, N, C], summed in O(N*E + N*C) loops
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
    pairwise sum in blocks of 128 with 8 accumulators). A test checks it against numpy on random arrays of many
    lengths (it would fail, not drift, if numpy changed)."""
    return 0.0 + _pairwise(a)


@compiled
def fsep_expected_sums(loads: np.ndarray, slots: np.ndarray, e: int, g: int):
    """The fractional FSEP split (every share x / r, no integer remainders) of T placements [T, N, C]: tokens,
    sent_intra, sent_inter [T, N] float, spread [T] (see `fsep_expected`), bad [T, 2] as in
    `fsep_summary_counts` (-2 only).

    A source i sends x = loads[i, j] to j's replicas on its node (x / h_node each) if there are any, else to all of
    j's replicas (x / r each). Tokens are summed over experts in index order; sums along a row use `numpy_sum`.

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
    return tok_b, intra_b, inter_b, spread_b, bad


def _check(bad: np.ndarray, slots: np.ndarray) -> None:
    if (bad[:, 0] == -1).all():
        return
    for t, (i, j) in enumerate(bad.tolist()):
        if i == -2:
            d, c = divmod(j, slots.shape[2])
            raise ValueError(f"placement {t}: slot [{d}, {c}] holds expert {slots[t, d, c]}, outside [0, E)")
        if i >= 0:
            raise ValueError(f"expert {j} receives tokens from device {i} but has no replica")


def fsep_summaries(loads: np.ndarray, slots: np.ndarray, devices_per_node: int) -> Traffic:
    """`traffic_summary(fsep_routing(...))` of placements slots [T, N, C] for loads [N, E] without the [N, E, N]
    tensors: Traffic of [T, N] int64 arrays. ValueError for an id outside [0, E) or tokens without a replica."""
    g = devices_per_node
    slots = np.ascontiguousarray(slots, dtype=np.int64)
    loads = np.ascontiguousarray(loads, dtype=np.int64)  # integer token counts (no copy when they already are)
    tokens, intra, inter, bad = fsep_summary_counts(loads, slots, g)
    _check(bad, slots)
    return Traffic(tokens, intra, inter)


def fsep_summary(loads: np.ndarray, placement: Placement, devices_per_node: int) -> Traffic:
    """`fsep_summaries` of one layout: Traffic of [N] int64 arrays."""
    loads = np.asarray(loads)
    n, e = placement.num_devices, placement.num_experts
    if loads.shape != (n, e):
        raise ValueError(f"loads shape {loads.shape} does not match placement ({n} devices, {e} experts)")
    if n % devices_per_node:
        raise ValueError(f"{n} devices do not split into nodes of {devices_per_node}")
    if np.any(loads < 0):
        raise ValueError("loads must be non-negative")
    return Traffic(*(x[0] for x in fsep_summaries(loads, placement.slots[None], devices_per_node)))


def fsep_expected(loads: np.ndarray, slots: np.ndarray, num_experts: int, devices_per_node: int
                  ) -> tuple[Traffic, np.ndarray]:
    """The expected split: the FSEP rule with every share taken fractionally (x / r, no integer remainders), on
    placements slots [T, N, C] (ids unchecked beyond [0, E): planners call it on many candidates): Traffic of [T, N]
    float arrays and spread [T] int64.

    spread: max over devices d of the (source with tokens, replica list) pairs whose list holds a replica on d. The
    exact device tokens differ from the fractional ones by less than it: a replica at position p of a list gets
    floor(x / r) + e_i(p) from source i (e_i(p) in {0, 1}) against x / r, a difference in (-1, 1) per source; d's
    replica of j sits in j's list on d's node (fed by that node's sources) and j's global list (fed by the sources
    on nodes without j)."""
    slots = np.ascontiguousarray(slots, dtype=np.int64)
    loads = np.ascontiguousarray(loads, dtype=np.int64)
    tokens, intra, inter, spread, bad = fsep_expected_sums(loads, slots, num_experts, devices_per_node)
    _check(bad, slots)
    return Traffic(tokens, intra, inter), spread
