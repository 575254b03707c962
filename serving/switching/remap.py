"""Re-map the target's replicas onto devices so that as much of what they need as possible is already in place.

Devices of one node are interchangeable to the scheduler (it only needs each TP group inside a node), so the
target's own device numbers are a packing, not a requirement: the same multiset of replicas on other devices of the
same shape is the same deployment.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import linear_sum_assignment

from common.topology import ClusterSpec
from serving.costmodel.models import ModelSpec
from serving.scheduler.plan import DeploymentPlan
from serving.switching.plan import Shard
from serving.switching.shards import holdings, replica_roles, shard_bytes, unit_weight_bytes


def match_kept(current: DeploymentPlan | None, target: DeploymentPlan) -> list[tuple[int, int]]:
    """(target k, current k) pairs with the same config on the same devices, matched in plan order."""
    if current is None:
        return []
    free = {}
    for c, key in enumerate(zip(current.replicas, current.devices)):
        free.setdefault(key, []).append(c)
    pairs = []
    for k, key in enumerate(zip(target.replicas, target.devices)):
        if free.get(key):
            pairs.append((k, free[key].pop(0)))
    return pairs


def remap_target(current: DeploymentPlan | None, target: DeploymentPlan, model: ModelSpec,
                 cluster: ClusterSpec) -> DeploymentPlan:
    """The target with device lists chosen to keep current replicas and reuse their weights (replica order, configs
    and dispatch unchanged).

    1. Keep: every target replica takes a current replica of the same (tp, pp), devices and all: the one on its own
       devices if there is one, else the first unclaimed in plan order.
    2. Nodes: the other target replicas' stages (largest TP group first) each go to the node with room whose free
       devices already hold the most of that stage's weights (a Hungarian match of its TP ranks to the node's free
       devices), ties to the tightest fit. If some stage finds no room, the last kept replica is released and step 2
       runs again; with none left the target keeps its own devices.
    3. Devices: on each node one Hungarian match (scipy.optimize.linear_sum_assignment) of all the TP ranks placed
       there to its free devices, maximising the weight bytes already in place (TP4 -> 2 x TP2 interleaves the old
       ranks so that every new device holds half of what it needs).
    4. If the target's own device lists keep more bytes in place (or as many, with more replicas kept), they stay.
    """
    if current is None or not current.replicas or not target.replicas:
        return target
    held = holdings(current, model.num_layers)
    wb = unit_weight_bytes(model)

    def in_place(role: Shard, d: int) -> float:
        inter = role.intersect(held[d][1]) if d in held else None
        return 0.0 if inter is None else shard_bytes(inter, wb)

    kept = match_kept(current, target)  # where the target already asks for a running replica, that one
    claimed, placed = {c for _, c in kept}, {k for k, _ in kept}
    for k, cfg in enumerate(target.replicas):
        if k in placed:
            continue
        c = next((c for c, cc in enumerate(current.replicas) if cc == cfg and c not in claimed), None)
        if c is not None:
            kept.append((k, c))
            claimed.add(c)
    while True:
        devices = _place(current, target, model, cluster, dict(kept), in_place)
        if devices is not None or not kept:
            break
        kept.pop()
    if devices is None:
        return target
    remapped = dataclasses.replace(target, devices=devices)

    # The target's own packing wins where it happens to reuse more (steps 2-3 are greedy across nodes).
    def score(p: DeploymentPlan) -> tuple[float, int]:
        total = sum(in_place(role, d) for cfg, devs in zip(p.replicas, p.devices)
                    for d, role in zip(devs, replica_roles(model.num_layers, cfg.tp, cfg.pp)))
        return total, len(match_kept(current, p))

    return remapped if score(remapped) >= score(target) else target


def _place(current, target, model, cluster, kept: dict[int, int], in_place) -> tuple | None:
    devices: list[tuple[int, ...] | None] = [None] * len(target.replicas)
    used = set()
    for k, c in kept.items():
        devices[k] = current.devices[c]
        used |= set(current.devices[c])
    G = cluster.devices_per_node
    free = {n: [d for d in range(n * G, (n + 1) * G) if d not in used] for n in range(cluster.num_nodes)}
    roles = {k: replica_roles(model.num_layers, cfg.tp, cfg.pp) for k, cfg in enumerate(target.replicas)}
    stages = sorted(((k, s) for k, cfg in enumerate(target.replicas) if k not in kept for s in range(cfg.pp)),
                    key=lambda ks: (-target.replicas[ks[0]].tp, ks))
    on_node: dict[int, list[tuple[int, int]]] = {n: [] for n in free}  # node -> (replica, position) placed there

    def value(rows: list[tuple[int, int]], devs: list[int]) -> np.ndarray:
        # Bytes in place, less a tie-break (well under one byte) toward rank order on ascending devices.
        v = np.array([[in_place(roles[k][p], d) for d in devs] for k, p in rows])
        return v - 1e-9 * np.abs(np.arange(len(rows))[:, None] - np.arange(len(devs))[None, :])

    # Step 2: a node per stage, valued on the devices earlier stages have not taken.
    avail = {n: list(v) for n, v in free.items()}
    for k, s in stages:
        tp = target.replicas[k].tp
        rows = [(k, s * tp + i) for i in range(tp)]
        best = None
        for n in free:
            if len(avail[n]) < tp:
                continue
            v = value(rows, avail[n])
            r, c = linear_sum_assignment(v, maximize=True)
            key = (-v[r, c].sum(), len(avail[n]), n)
            if best is None or key < best[0]:
                best = (key, [avail[n][j] for j in c])
        if best is None:
            return None
        n = best[0][2]
        avail[n] = [d for d in avail[n] if d not in best[1]]
        on_node[n] += rows
    # Step 3: devices inside each node.
    slots: dict[int, dict[int, int]] = {}
    for n, rows in on_node.items():
        if not rows:
            continue
        r, c = linear_sum_assignment(value(rows, free[n]), maximize=True)
        for i, j in zip(r, c):
            k, p = rows[i]
            slots.setdefault(k, {})[p] = free[n][j]
    for k, pos in slots.items():
        devices[k] = tuple(pos[p] for p in range(target.replicas[k].gpus))
    return tuple(devices)
