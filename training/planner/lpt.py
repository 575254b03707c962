"""Shared steps of the greedy planners: replica counts and longest-processing-time-first placement.

Notation: N devices, E experts, C slots per device, G devices per node, K = N / G nodes, r [E] replica counts.
"""

from __future__ import annotations

import numpy as np

from training.planner import kernels


def even_replicas(num_experts: int, total_slots: int) -> np.ndarray | None:
    """N*C / E replicas per expert, or None when E does not divide the slots."""
    if total_slots % num_experts:
        return None
    return np.full(num_experts, total_slots // num_experts, dtype=np.int64)


def priority_replicas(expert_loads: np.ndarray, total_slots: int, num_nodes: int) -> np.ndarray:
    """The LAER-MoE paper's priority queue.

    1. Every expert starts with #nodes replicas if that fits in the slots, else with 1.
    2. Repeatedly the expert with the highest load per replica grows: +#nodes when it already has >= #nodes
       replicas, else +1 (capped by the slots left), until all slots are used; ties go to the lower expert id.
    Compiled (`kernels.priority_counts`).
    """
    w = np.ascontiguousarray(expert_loads, dtype=np.float64)
    return kernels.priority_counts(w, int(total_slots), int(num_nodes))


def lpt_place(expert_loads: np.ndarray, replicas: np.ndarray, num_devices: int, slots_per_device: int,
              devices_per_node: int) -> np.ndarray:
    """[N, C] placement: replica instances by load per replica, heaviest first, each to the least-loaded device with a
    free slot among the nodes holding the fewest copies of that expert (ties: lower device id). Compiled
    (`kernels.lpt_slots`)."""
    w = np.asarray(expert_loads, dtype=float)
    r = np.asarray(replicas, dtype=np.int64)
    if r.sum() != num_devices * slots_per_device:
        raise ValueError(f"replica counts sum to {r.sum()}, not N*C = {num_devices * slots_per_device}")
    per_rep = w / np.maximum(r, 1)
    return kernels.lpt_slots(per_rep, r, num_devices, slots_per_device, devices_per_node)
