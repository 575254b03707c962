"""DeepSeek's expert-parallel load balancer (EPLB), written from its published description.

Notation: N devices, E experts, C slots per device, G devices per node, K nodes, w [E] tokens per expert.
Token sources are ignored: replicas of an expert share its load equally. Hierarchical when the expert groups split
evenly over nodes and each node can hold its experts; global otherwise.
"""

from __future__ import annotations

import numpy as np

from training.planner import accel
from training.planner.base import Plan, Planner


def balanced_packing(weights: np.ndarray, num_packs: int, jit: bool | None = None) -> np.ndarray:
    """[items] pack of each item: heaviest first to the lightest pack that is not full; every pack gets
    items / num_packs items. jit: `accel.resolve_jit` (same packs either way)."""
    items = weights.size
    if items % num_packs:
        raise ValueError(f"{items} items do not split into {num_packs} equal packs")
    if accel.resolve_jit(jit):
        return accel.kernels().pack_balanced(weights, np.argsort(-weights, kind="stable"), num_packs)
    cap = items // num_packs
    pack = np.empty(items, dtype=np.int64)
    load = np.zeros(num_packs)
    count = np.zeros(num_packs, dtype=np.int64)
    for i in np.argsort(-weights, kind="stable"):
        p = int(np.argmin(np.where(count < cap, load, np.inf)))
        pack[i] = p
        load[p] += weights[i]
        count[p] += 1
    return pack


def replicate(weights: np.ndarray, slots: int, jit: bool | None = None) -> np.ndarray:
    """[E] replica counts: one each, then one more at a time to the expert with the highest load per replica."""
    r = np.ones(weights.size, dtype=np.int64)
    if accel.resolve_jit(jit):
        return accel.kernels().greedy_increments(np.asarray(weights, dtype=float), r, slots - weights.size)
    for _ in range(slots - weights.size):
        r[np.argmax(weights / r)] += 1
    return r


def _pack_replicas(weights: np.ndarray, experts: np.ndarray, r: np.ndarray, num_devices: int, c: int,
                   jit: bool | None = None) -> np.ndarray:
    """[num_devices, C] expert ids: replicas (weight w / r) packed to devices with C each."""
    rep_expert = np.repeat(experts, r)
    rep_w = np.repeat(weights / r, r)
    dev = balanced_packing(rep_w, num_devices, jit)
    order = np.argsort(dev, kind="stable")
    return rep_expert[order].reshape(num_devices, c)


class EPLB(Planner):
    name = "eplb"

    def __init__(self, *args, num_groups: int | None = None, **kw):
        super().__init__(*args, **kw)
        self.num_groups = num_groups  # expert groups packed to nodes; None: one group per node

    def _plan(self, loads: np.ndarray) -> Plan:
        return self.fsep_plan(loads, eplb_placement(loads, self.n, self.c, self.g, self.num_groups, self.jit))


def eplb_placement(loads: np.ndarray, n: int, c: int, g: int, num_groups: int | None = None,
                   jit: bool | None = None) -> np.ndarray:
    """[N, C] EPLB layout for loads [N, E] (only the expert totals matter)."""
    w = loads.sum(0).astype(float)
    e = w.size
    k = n // g
    groups = num_groups or k
    hierarchical = e % groups == 0 and groups % k == 0 and g * c >= e // k
    if not hierarchical:
        r = replicate(w, n * c, jit)
        return _pack_replicas(w, np.arange(e), r, n, c, jit)
    # 1. Pack expert groups to nodes (equal group count per node) by group load.
    size = e // groups
    node_of_group = balanced_packing(w.reshape(groups, size).sum(1), k, jit)
    if accel.resolve_jit(jit):  # steps 2 and 3 below, compiled
        return accel.kernels().eplb_node_layouts(w, node_of_group, size, k, g, c)
    slots = np.empty((n, c), dtype=np.int64)
    for m in range(k):
        experts = np.concatenate([np.arange(q * size, (q + 1) * size) for q in np.flatnonzero(node_of_group == m)])
        # 2. Replicate heavy experts within the node; 3. pack replicas to the node's devices.
        r = replicate(w[experts], g * c, jit)
        slots[m * g:(m + 1) * g] = _pack_replicas(w[experts], experts, r, g, c, jit)
    return slots
