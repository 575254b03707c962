"""Expert layouts and the FSEP token-routing rule. Pure numpy: the planner, the runtime and the simulator share it.

Notation: N devices, E experts, C expert slots per device, G devices per node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Placement:
    """Which expert each slot restores. Replicas are allowed, two on one device too."""

    slots: np.ndarray  # [N, C] int, expert id held by slot c of device d
    num_experts: int  # E; every id in slots is in [0, E)

    def __post_init__(self):
        s = np.array(self.slots)
        if s.ndim != 2 or s.shape[0] < 1 or s.shape[1] < 1:
            raise ValueError(f"Placement.slots must be a non-empty [N, C] array, got shape {s.shape}")
        if not np.issubdtype(s.dtype, np.integer):
            if not np.all(np.equal(np.mod(s, 1), 0)):
                raise ValueError("Placement.slots must hold integer expert ids")
        s = s.astype(np.int64)
        if self.num_experts < 1:
            raise ValueError(f"Placement.num_experts must be >= 1, got {self.num_experts}")
        bad = (s < 0) | (s >= self.num_experts)
        if bad.any():
            d, c = np.argwhere(bad)[0]
            raise ValueError(f"Placement: slot [{d}, {c}] holds expert {s[d, c]}, outside [0, {self.num_experts})")
        s.setflags(write=False)
        object.__setattr__(self, "slots", s)

    @property
    def num_devices(self) -> int:
        return self.slots.shape[0]

    @property
    def slots_per_device(self) -> int:
        return self.slots.shape[1]

    def replica_counts(self) -> np.ndarray:
        """[E] number of slots holding each expert."""
        return np.bincount(self.slots.ravel(), minlength=self.num_experts)

    def holders(self) -> np.ndarray:
        """[E, N] number of replicas of expert j on device d."""
        h = np.zeros((self.num_experts, self.num_devices), dtype=np.int64)
        np.add.at(h, (self.slots, np.arange(self.num_devices)[:, None].repeat(self.slots_per_device, 1)), 1)
        return h

    def expert_slots(self, expert: int) -> list[tuple[int, int]]:
        """(device, slot) pairs holding `expert`, device-major."""
        return [tuple(x) for x in np.argwhere(self.slots == expert)]

    def require_all_experts(self) -> None:
        missing = np.flatnonzero(self.replica_counts() == 0)
        if missing.size:
            raise ValueError(f"Placement leaves experts {missing.tolist()} without a replica")


def static_ep_placement(num_devices: int, num_experts: int) -> Placement:
    """Plain expert parallel: device d holds experts d*E/N .. (d+1)*E/N - 1."""
    if num_experts % num_devices:
        raise ValueError(f"static EP needs E divisible by N, got E={num_experts}, N={num_devices}")
    return Placement(np.arange(num_experts).reshape(num_devices, -1), num_experts)


def fsdp_ep_placement(num_devices: int, num_experts: int, slots_per_device: int) -> Placement:
    """The LAER-MoE paper's static FSDP+EP layout: device d holds experts {i*(E/C) + d mod (E/C)}, i < C."""
    if num_experts % slots_per_device:
        raise ValueError(f"FSDP+EP needs E divisible by C, got E={num_experts}, C={slots_per_device}")
    group = num_experts // slots_per_device
    d = np.arange(num_devices)[:, None]
    i = np.arange(slots_per_device)[None, :]
    return Placement(i * group + d % group, num_experts)


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
      1. device counts = floor(load * w / sum w); the remainder goes one each to the devices with the largest
         fractional parts (ties: lower device index), so the counts are deterministic and sum to the load;
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
        ideal = int(load_row[j]) * w / w.sum()  # Step 1
        dev = np.floor(ideal).astype(np.int64)
        rem = int(load_row[j]) - int(dev.sum())
        order = np.argsort(-(ideal - dev), kind="stable")
        dev[order[:rem]] += 1
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


def fsep_summary(loads: np.ndarray, placement: Placement, devices_per_node: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What `fsep_routing` implies, without building the [N, E, N] tensor: O(N*E + N*C) vectorised.

    Returns (device_tokens [N], sent_intra [N], sent_inter [N]) int64: tokens each device computes, and tokens each
    source device sends to other devices of its node / to other nodes. Equal to the sums of `fsep_routing` exactly
    (same integer split, same rotating remainder), which the tests check.

    Steps:
    1. Every (source i, expert j) belongs to one group: (node of i, j) when j has a replica on i's node, else the
       global group of j. A group's replica list is device-major, so device d owns a contiguous run of positions.
    2. Each source gives floor(load / r) to every position of its group and one extra token to a cyclic run of
       `rem` positions starting at i mod r; the extras of all sources of a group are a difference array.
    3. Positions map back to devices; a source's own positions give the tokens it keeps (no communication).
    """
    loads = np.asarray(loads)
    n, e = placement.num_devices, placement.num_experts
    if loads.shape != (n, e):
        raise ValueError(f"loads shape {loads.shape} does not match placement ({n} devices, {e} experts)")
    if n % devices_per_node:
        raise ValueError(f"{n} devices do not split into nodes of {devices_per_node}")
    if np.any(loads < 0):
        raise ValueError("loads must be non-negative")
    loads = loads.astype(np.int64)
    g = devices_per_node
    k = n // g
    # Replicas of j on device d, [E, N] (bincount: np.add.at is slow on small arrays and this runs per plan).
    h = np.bincount((placement.slots * n + np.arange(n)[:, None]).ravel(), minlength=e * n).reshape(e, n)
    node = np.arange(n) // g  # [N]
    h_node = h.reshape(e, k, g).sum(2)  # [E, K] replicas of j on node m
    r_all = h.sum(1)  # [E]

    # Step 1: group id and replica-list length per (source, expert).
    local = h_node[:, node].T > 0  # [N, E] j has a replica on i's node
    jj = np.broadcast_to(np.arange(e), (n, e))
    group = np.where(local, node[:, None] * e + jj, k * e + jj)  # [N, E]
    length = np.concatenate([h_node.T.ravel(), r_all])  # [K*E + E] group list lengths
    r = length[group]  # [N, E]
    if np.any((r == 0) & (loads > 0)):
        i, j = np.argwhere((r == 0) & (loads > 0))[0]
        raise ValueError(f"expert {j} receives tokens from device {i} but has no replica")
    rs = np.maximum(r, 1)
    base, rem = np.divmod(loads, rs)
    start = np.arange(n)[:, None] % rs  # [N, E] first position that gets an extra token

    # Step 2: extras per position via a difference array; each group gets length + 1 cells (the last is slack).
    offs = np.concatenate([[0], np.cumsum(length + 1)])  # [groups + 1]
    o = offs[group]
    end = start + rem
    wrap = end > rs
    idx = np.concatenate([(o + start).ravel(), (o + np.minimum(end, rs)).ravel(), o[wrap], o[wrap] + end[wrap] - rs[wrap]])
    val = np.concatenate([np.ones(start.size), -np.ones(start.size), np.ones(wrap.sum()), -np.ones(wrap.sum())])
    has = np.concatenate([rem.ravel() > 0, rem.ravel() > 0, np.ones(2 * wrap.sum(), bool)])
    diff = np.bincount(idx[has], weights=val[has], minlength=offs[-1])
    extra = np.cumsum(diff)  # per position (slack cells are 0)

    # Step 3: positions -> devices. Local group (m, j) lists node m's devices; global group j lists all devices.
    jn, dn = np.nonzero(h)  # replica-holding (expert, device) pairs, expert-major
    cnt = h[jn, dn]
    loc = np.lexsort((dn, jn, node[dn]))  # local groups are ordered (node, expert, device)
    g_loc, d_loc, c_loc = node[dn[loc]] * e + jn[loc], dn[loc], cnt[loc]
    pos_dev = np.concatenate([np.repeat(d_loc, c_loc), np.repeat(dn, cnt)])  # device of each position, group-major
    keep = np.ones(offs[-1], bool)
    keep[offs[1:] - 1] = False  # drop slack cells
    base_sum = np.bincount(group.ravel(), weights=base.ravel(), minlength=k * e + e)  # [groups]
    device_tokens = (np.bincount(pos_dev, weights=extra[keep], minlength=n)
                     + np.bincount(d_loc, weights=base_sum[g_loc] * c_loc, minlength=n)
                     + np.bincount(dn, weights=base_sum[k * e + jn] * cnt, minlength=n))

    # Tokens a source keeps: base times its own replicas plus extras on its run [s, s + own) of the local list.
    own = h.T  # [N, E] replicas of j on device i
    before = np.cumsum(h.reshape(e, k, g), axis=2).reshape(e, n).T - own  # [N, E] positions before i in its node
    def covered(x):  # extras among positions [0, x) for the cyclic run [start, end) mod r
        return np.maximum(0, np.minimum(x, end) - start) + np.maximum(0, np.minimum(x, end - rs))
    keep_self = np.where(local, base * own + covered(before + own) - covered(before), 0)
    sent_intra = np.where(local, loads - keep_self, 0).sum(1)
    sent_inter = np.where(local, 0, loads).sum(1)
    return np.rint(device_tokens).astype(np.int64), sent_intra, sent_inter


def fsep_expected(loads: np.ndarray, slots: np.ndarray, num_experts: int, devices_per_node: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`fsep_summary` with the even split taken fractionally (no integer remainders): float [N] device tokens,
    sent_intra, sent_inter. Each differs from the exact value by less than one token per (source, expert) pair;
    planners use it to compare candidate layouts cheaply (a handful of array operations, no validation)."""
    loads = np.asarray(loads, dtype=float)
    n, e, g = loads.shape[0], num_experts, devices_per_node
    k = n // g
    h = np.bincount((slots * n + np.arange(n)[:, None]).ravel(), minlength=e * n).reshape(e, n)  # [E, N]
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
    return tokens, intra, inter


def fsep_expected_spread(loads: np.ndarray, slots: np.ndarray, num_experts: int, devices_per_node: int) -> int:
    """How far `fsep_summary`'s device tokens can be from `fsep_expected`'s: less than max_d of the number of
    (source with tokens, replica list) pairs whose list holds a replica on d.

    Why: a replica at position p of a list gets floor(x / r) + e_i(p) from source i (e_i(p) in {0, 1}) against
    x / r in the fractional split, a difference in (-1, 1) for each source; d's replica of j sits in two lists, j's
    list on d's node (fed by that node's sources) and j's global list (fed by the sources on nodes without j).
    """
    loads = np.asarray(loads)
    n, e, g = loads.shape[0], num_experts, devices_per_node
    k = n // g
    h = np.bincount((slots * n + np.arange(n)[:, None]).ravel(), minlength=e * n).reshape(e, n)  # [E, N]
    h_node = h.reshape(e, k, g).sum(2)  # [E, K]
    nz = (loads > 0).reshape(k, g, e).sum(1).T  # [E, K] sources with tokens for j on node m
    nz_global = np.where(h_node == 0, nz, 0).sum(1)  # [E] sources feeding j's global list
    node = np.arange(n) // g
    return int((h * (nz[:, node] + nz_global[:, None])).sum(0).max())
