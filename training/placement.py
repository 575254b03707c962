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
