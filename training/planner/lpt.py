"""Shared steps of the greedy planners: replica counts and longest-processing-time-first placement.

Notation: N devices, E experts, C slots per device, G devices per node, K = N / G nodes, r [E] replica counts.
"""

from __future__ import annotations

import heapq

import numpy as np

from training.planner import accel


def even_replicas(num_experts: int, total_slots: int) -> np.ndarray | None:
    """N*C / E replicas per expert, or None when E does not divide the slots."""
    if total_slots % num_experts:
        return None
    return np.full(num_experts, total_slots // num_experts, dtype=np.int64)


def priority_replicas(expert_loads: np.ndarray, total_slots: int, num_nodes: int, jit: bool | None = None
                      ) -> np.ndarray:
    """The LAER-MoE paper's priority queue.

    1. Every expert starts with #nodes replicas if that fits in the slots, else with 1.
    2. Repeatedly the expert with the highest load per replica grows: +#nodes when it already has >= #nodes
       replicas, else +1 (capped by the slots left), until all slots are used.
    jit: `accel.resolve_jit` (the compiled kernel gives the same counts).
    """
    w = np.asarray(expert_loads, dtype=float)
    if accel.resolve_jit(jit):
        return accel.kernels().priority_counts(w, int(total_slots), int(num_nodes))
    e = w.size
    start = num_nodes if num_nodes * e <= total_slots else 1
    r = np.full(e, start, dtype=np.int64)
    left = total_slots - int(r.sum())
    # Max-heap on load per replica; ties go to the lower expert id.
    heap = [(-w[j] / r[j], j) for j in range(e)]
    heapq.heapify(heap)
    while left > 0:
        _, j = heapq.heappop(heap)
        step = min(num_nodes if r[j] >= num_nodes else 1, left)
        r[j] += step
        left -= step
        heapq.heappush(heap, (-w[j] / r[j], j))
    return r


def lpt_place(expert_loads: np.ndarray, replicas: np.ndarray, num_devices: int, slots_per_device: int,
              devices_per_node: int, jit: bool | None = None) -> np.ndarray:
    """[N, C] placement: replica instances by load per replica, heaviest first, each to the least-loaded device with a
    free slot among the nodes holding the fewest copies of that expert (ties: lower device id).

    Three implementations of the same greedy (tests check they agree): the compiled kernel (`jit`, see
    `accel.resolve_jit`) and, without numba, a heap per node, fast when there are few nodes, or a vectorised round
    per expert, fast when there are many.
    """
    w = np.asarray(expert_loads, dtype=float)
    r = np.asarray(replicas, dtype=np.int64)
    if r.sum() != num_devices * slots_per_device:
        raise ValueError(f"replica counts sum to {r.sum()}, not N*C = {num_devices * slots_per_device}")
    per_rep = w / np.maximum(r, 1)
    if accel.resolve_jit(jit):
        return accel.kernels().lpt_slots(per_rep, r, num_devices, slots_per_device, devices_per_node)
    order = np.argsort(-per_rep, kind="stable")
    k = num_devices // devices_per_node
    if k <= 64:
        return _lpt_heaps(per_rep, r, order, num_devices, slots_per_device, devices_per_node)
    return _lpt_rounds(per_rep, r, order, num_devices, slots_per_device, devices_per_node)


def _lpt_heaps(per_rep, r, order, n, c, g) -> np.ndarray:
    k = n // g
    heaps = [[(0.0, d) for d in range(m * g, (m + 1) * g)] for m in range(k)]  # (load, device), free devices only
    node_free = [g * c] * k
    free = [c] * n
    slots = [[] for _ in range(n)]
    per_rep = per_rep.tolist()

    def take(m, j, wj):
        load, d = heapq.heappop(heaps[m])
        slots[d].append(j)
        free[d] -= 1
        node_free[m] -= 1
        if free[d]:
            heapq.heappush(heaps[m], (load + wj, d))

    # Rounds: the nodes with the fewest copies of j each take one replica (their picks only touch their own
    # devices, so the order inside a round does not matter); when fewer replicas are left than candidate nodes, the
    # nodes whose least-loaded free device is lightest take them.
    for j in order.tolist():
        wj = per_rep[j]
        copies = [0] * k
        left = int(r[j])
        while left:
            avail = [m for m in range(k) if node_free[m]]
            cmin = min(copies[m] for m in avail)
            cand = [m for m in avail if copies[m] == cmin]
            if len(cand) > left:
                cand = [m for _, _, m in sorted((heaps[m][0][0], heaps[m][0][1], m) for m in cand)[:left]]
            for m in cand:
                take(m, j, wj)
                copies[m] += 1
            left -= len(cand)
    return np.array(slots, dtype=np.int64)


def _lpt_rounds(per_rep, r, order, n, c, g) -> np.ndarray:
    # Within one round the chosen nodes are distinct, so picking the best free device of each of the m least-loaded
    # candidate nodes at once is exactly m sequential greedy steps.
    k = n // g
    load = np.zeros(n)
    free = np.full(n, c, dtype=np.int64)
    slots = np.empty((n, c), dtype=np.int64)
    base = np.arange(k) * g
    for j in order:
        left = int(r[j])
        copies = np.zeros(k, dtype=np.int64)
        while left:
            masked = np.where(free > 0, load, np.inf).reshape(k, g)
            best = masked.argmin(1)
            mins = masked[np.arange(k), best]
            avail = np.isfinite(mins)
            cmin = copies[avail].min()
            cand = np.flatnonzero(avail & (copies == cmin))
            take = cand[np.argsort(mins[cand], kind="stable")[:left]]
            devs = base[take] + best[take]
            slots[devs, c - free[devs]] = j
            free[devs] -= 1
            load[devs] += per_rep[j]
            copies[take] += 1
            left -= take.size
    return slots
