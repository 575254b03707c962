"""The FSEP routing rule, the contract between planner and runtime: how a source device's tokens for an expert split
over the expert's replicas (node-local replicas first), and what that split costs in traffic.

Notation: N devices, E experts, C expert slots per device, G devices per node, K = N / G nodes.
loads[i, j]: tokens from source device i for expert j; routing[i, j, d]: those of them computed on device d.

The rule itself is `split_counts`: tensor ops over per-layout tables (`slot_shares`), for the FSEP rule or a planner's
explicit proportions. The runtime runs it on its device for its own row with no host sync; host callers (`split_row`,
`split_row_by_weights`, `fsep_routing`) run the same ops on CPU tensors, all source rows at once (measured 3-30x
faster than the per-expert Python loop it replaced, kept in tests/training/routing_reference.py as the reference).
`traffic_summary` is the one definition of a routing's device tokens and sent tokens. The planner scores candidate
layouts with the sums of the rule, `fsep_summaries` (exact) and `fsep_expected` (fractional, cheaper), without
building [N, E, N] tensors: loops compiled with numba (measured to be what keeps the planners within the paper's solve
times), equal to `traffic_summary(fsep_routing(...))` (tests check it). Float sums along a row are taken in numpy's
order (`numpy_sum`), so the expected objectives equal the vectorised numpy formula bit for bit. `cache=True` keeps
the machine code on disk (`training.planner.kernels.warm_up`); nogil: the async planner's worker thread runs beside
training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
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


@dataclass(frozen=True)
class SlotShares:
    """The routing rule's tables for one layout and some source devices: from source row s, slot m takes an even share
    (remainder rotated by the source index) of an `amount` of tokens over a group of `size[s, m]` slots, at
    `position[s, m]` in that group. Built on the host once per layout (`slot_shares`) and moved to where the counts
    are; `split_counts` then needs no host data (the runtime's dispatch calls it on the GPU with no sync).

    Groups, device-major: the FSEP rule's group of (source s, expert j) is j's replicas on s's node, or all of j's
    replicas when that node has none, and its amount is s's tokens for j. With a planner's fractions the group is j's
    slots on one device d, and its amount is d's count of s's tokens for j (largest remainder of the fractions).
    """

    sources: torch.Tensor  # [S, 1] int64 source device of each row (the remainder's rotation offset)
    expert: torch.Tensor  # [M] int64 expert held by each slot, M = N*C slots device-major
    device: torch.Tensor  # [M] int64 device of each slot
    size: torch.Tensor  # [S, M] int64 slots in the slot's group for that source; 0: it takes none of its tokens
    position: torch.Tensor  # [S, M] int64 the slot's place in its group
    fractions: torch.Tensor | None  # [S, E, N] float64 proportions over devices (None: the FSEP rule)
    fraction_sums: torch.Tensor | None  # [S, E] float64 their sums along N, taken by numpy (as the planner's)


def slot_shares(placement: Placement, sources, devices_per_node: int, fractions: np.ndarray | None = None,
                device=None) -> SlotShares:
    """The tables of `split_counts` for source devices `sources` [S] (host numpy, O(S * N * C)).

    fractions: [S, E, N] non-negative proportions over devices for each source row's experts (a planner's routing;
    only devices holding the expert may have weight, need not sum to 1); None: the FSEP rule (node-local replicas
    first). A (source, expert) whose fractions sum to 0 falls back to the expert's holder counts.
    """
    n, c, e = placement.num_devices, placement.slots_per_device, placement.num_experts
    g = devices_per_node
    if g < 1 or n % g:
        raise ValueError(f"{n} devices do not split into nodes of {g}")
    src = np.asarray(sources, dtype=np.int64).reshape(-1)
    if np.any((src < 0) | (src >= n)):
        raise ValueError(f"source devices {src.tolist()} outside [0, {n})")
    flat = placement.slots.ravel()  # [M]
    slot_dev = np.arange(flat.size) // c
    holders = placement.holders()  # [E, N]
    replicas = holders.sum(1)  # [E]
    # occ: the slot's place among all replicas of its expert (device-major); a group is a contiguous run of them.
    order = np.argsort(flat, kind="stable")
    occ = np.empty(flat.size, dtype=np.int64)
    occ[order] = np.arange(flat.size) - (np.cumsum(replicas) - replicas)[flat[order]]
    table = None
    if fractions is None:
        per_node = holders.reshape(e, n // g, g).sum(2)  # [E, K]
        node = (src // g)[:, None]  # [S, 1]
        local = per_node[flat[None, :], node]  # [S, M] replicas of the slot's expert on the source's node
        on_node = (slot_dev // g)[None, :] == node
        size = np.where(local > 0, local * on_node, replicas[flat][None, :])
        before = (np.cumsum(per_node, 1) - per_node)[flat[None, :], node]  # replicas on earlier nodes
        position = np.where(local > 0, occ[None, :] - before, occ[None, :])
    else:
        w = np.asarray(fractions, dtype=np.float64)
        if w.shape != (src.size, e, n):
            raise ValueError(f"fractions shape {w.shape} does not match ({src.size}, {e}, {n})")
        w = np.where(w.sum(-1, keepdims=True) > 0, w, holders[None].astype(np.float64))
        sums = w.sum(-1)
        sums[sums <= 0] = 1.0  # an expert without a replica: no share anywhere (its tokens are refused by the caller)
        size = np.broadcast_to(holders[flat, slot_dev], (src.size, flat.size))
        position = np.broadcast_to(occ - (np.cumsum(holders, 1) - holders)[flat, slot_dev], size.shape)
        table = (torch.from_numpy(np.ascontiguousarray(w)).to(device), torch.from_numpy(sums).to(device))

    def put(a):
        return torch.from_numpy(np.array(a, dtype=np.int64)).to(device)  # a copy: placements are read-only

    return SlotShares(put(src[:, None]), put(flat), put(slot_dev), put(size), put(position),
                      *(table if table is not None else (None, None)))


def split_counts(counts: torch.Tensor, shares: SlotShares) -> torch.Tensor:
    """The routing rule: counts [S, E] int64 tokens of each source row per expert -> [S, M] int64 tokens of each
    source computed by each slot (device-major). Tensor ops only, on the counts' device (no host sync).

    1. Each slot's amount: the source's count for its expert (FSEP rule), or the largest-remainder count of its device
       (planner fractions; `training.rounding`, ties: lower device index, so the counts sum to the load).
    2. A group of r slots shares an amount x: floor(x / r) each, and one more for the x mod r positions starting at the
       source index (mod r), so no replica is favoured systematically.
    An expert with tokens but no replica gets no slot: its tokens are missing from the sum (callers check).
    """
    if shares.fractions is None:
        amount = counts.index_select(1, shares.expert)  # Step 1
    else:
        split = largest_remainder(counts.unsqueeze(-1).double() * shares.fractions / shares.fraction_sums.unsqueeze(-1),
                                  counts)  # [S, E, N]
        n = split.shape[-1]
        amount = split.flatten(1).index_select(1, shares.expert * n + shares.device)
    size = shares.size.clamp_min(1)  # Step 2
    base = amount // size
    extra = (shares.position - shares.sources) % size < amount - base * size
    return (base + extra) * (shares.size > 0)


def _check_loads(loads: np.ndarray, placement: Placement) -> None:
    if np.any(loads < 0):
        raise ValueError("loads must be non-negative")
    missing = (loads > 0) & (placement.replica_counts() == 0)[None, :]
    if missing.any():
        i, j = np.argwhere(missing)[0]
        raise ValueError(f"expert {j} receives tokens from device {i} but has no replica")


def split_row(load_row: np.ndarray, placement: Placement, source: int, devices_per_node: int) -> np.ndarray:
    """The FSEP routing rule (`split_counts`) for one source device on the host.

    Tokens from `source` for expert j split evenly over j's replicas (slots) on the source's node; if j has none there,
    evenly over all its replicas. A device holding two replicas of j gets two shares, one per slot.
    load_row: [E] integer tokens from `source` routed to each expert.
    Returns [N, C] int64 tokens from `source` computed by each slot; its sum per expert equals load_row.
    """
    return _split_rows(load_row, placement, source, devices_per_node, None)


def split_row_by_weights(load_row: np.ndarray, weights: np.ndarray, placement: Placement, source: int) -> np.ndarray:
    """A planner's routing proportions turned into integer per-slot counts for one source device (`split_counts`).

    load_row: [E] integer tokens from `source` per expert. weights: [E, N] non-negative proportions over devices
    (need not sum to 1; only devices holding the expert may have weight). An expert with tokens but all-zero weights
    falls back to the proportions of its replica counts. Returns [N, C] int64.
    """
    weights = np.asarray(weights, dtype=np.float64)
    n, e = placement.num_devices, placement.num_experts
    if weights.shape != (e, n):
        raise ValueError(f"weights {weights.shape} do not match ({e}, {n})")
    return _split_rows(load_row, placement, source, 1, weights[None])


def _split_rows(load_row, placement, source, devices_per_node, fractions):
    n, e = placement.num_devices, placement.num_experts
    load_row = np.asarray(load_row)
    if load_row.shape != (e,):
        raise ValueError(f"load row shape {load_row.shape} does not match placement ({e} experts)")
    if not 0 <= source < n:
        raise ValueError(f"source device {source} outside [0, {n})")
    shares = slot_shares(placement, [source], devices_per_node, fractions)
    _check_loads(load_row[None], placement)
    counts = torch.from_numpy(np.ascontiguousarray(load_row[None], dtype=np.int64))
    return split_counts(counts, shares).numpy().reshape(placement.slots.shape)


def fsep_routing(loads: np.ndarray, placement: Placement, devices_per_node: int) -> np.ndarray:
    """The FSEP routing rule over all source devices (`split_counts`, all rows at once).

    loads: [N, E] integer tokens from source device i routed to expert j.
    Returns routing [N, E, N] int64: tokens from i for j computed on device d; routing.sum(2) == loads.
    """
    loads = np.asarray(loads)
    n, e = placement.num_devices, placement.num_experts
    if loads.shape != (n, e):
        raise ValueError(f"loads shape {loads.shape} does not match placement ({n} devices, {e} experts)")
    shares = slot_shares(placement, np.arange(n), devices_per_node)
    _check_loads(loads, placement)
    per_slot = split_counts(torch.from_numpy(np.ascontiguousarray(loads, dtype=np.int64)), shares)  # [N, M]
    routing = torch.zeros(n, e * n, dtype=torch.int64)
    routing.index_add_(1, shares.expert * n + shares.device, per_slot)
    return routing.view(n, e, n).numpy()


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
