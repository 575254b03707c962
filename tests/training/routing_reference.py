"""The routing rule as first written: a loop over experts per source device, on the host. The runtime's vectorised
`training.routing.split_counts` (one set of tensor ops for all slots, no host sync on a GPU) is checked against it
bit for bit (tests/training/test_routing_split.py).

Notation: N devices, E experts, C expert slots per device.
"""

from __future__ import annotations

import numpy as np

from training.placement import Placement
from training.rounding import largest_remainder


def reference_split_row(load_row: np.ndarray, placement: Placement, source: int, devices_per_node: int) -> np.ndarray:
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


def reference_split_row_by_weights(load_row: np.ndarray, weights: np.ndarray, placement: Placement, source: int) -> np.ndarray:
    """A planner's routing proportions turned into integer per-slot counts for one source device.

    load_row: [E] integer tokens from `source` per expert. weights: [E, N] non-negative proportions over devices
    (need not sum to 1; only devices holding the expert may have weight). Per expert:
      1. device counts: load * w / sum w by largest remainder (`training.rounding`; ties: lower device index), so
         the counts are deterministic and sum to the load;
      2. a device's count splits evenly over its slots holding the expert, remainder rotated by the source index.
    An expert with tokens but all-zero weights falls back to `reference_split_row`'s even split over all its replicas.
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


def reference_fsep_routing(loads: np.ndarray, placement: Placement, devices_per_node: int) -> np.ndarray:
    """The FSEP routing rule over all source devices (`reference_split_row` per source).

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
        per_slot = reference_split_row(loads[i], placement, i, devices_per_node).ravel()  # [N*C]
        np.add.at(routing[i], (placement.slots.ravel(), dev_of_slot), per_slot)
    return routing
