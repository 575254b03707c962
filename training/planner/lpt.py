"""Shared steps of the greedy planners: replica counts and longest-processing-time-first placement.

Notation: N devices, E experts, C slots per device, G devices per node, K = N / G nodes, r [E] replica counts.
"""

from __future__ import annotations

from enum import Enum

import numpy as np

from training.planner import kernels


class PlacementRule(Enum):
    """Which nodes a replica instance may go to in `lpt_place`."""

    # The LAER-MoE paper's rule (their C++ greedy_balancer): the nodes with the fewest copies of the expert over all
    # nodes; when those are all full, the least-loaded free device anywhere.
    PAPER = "paper"
    # Ours (LAER+): the nodes with the fewest copies among the nodes that still have a free slot, so a full node
    # never sends the replica to a node that already holds copies.
    FREE_NODES = "free_nodes"


def even_replicas(num_experts: int, total_slots: int) -> np.ndarray | None:
    """N*C / E replicas per expert, or None when E does not divide the slots."""
    if total_slots % num_experts:
        return None
    return np.full(num_experts, total_slots // num_experts, dtype=np.int64)


def priority_replicas(expert_loads: np.ndarray, total_slots: int, num_nodes: int) -> np.ndarray:
    """The LAER-MoE paper's priority queue (their C++ greedy_balancer).

    1. Every expert starts with #nodes replicas if that fits in the slots, else with 1.
    2. Repeatedly the expert with the highest load per replica grows: +1 while it has fewer than #nodes replicas,
       else +#nodes; when +#nodes no longer fits in the slots left, that expert stops growing (leaves the queue)
       and the next ones take the slots left, +1 each while they have fewer than #nodes. Until all slots are used;
       ties go to the lower expert id.
    Compiled (`kernels.priority_counts`).
    """
    w = np.ascontiguousarray(expert_loads, dtype=np.float64)
    return kernels.priority_counts(w, int(total_slots), int(num_nodes))


def lpt_place(expert_loads: np.ndarray, replicas: np.ndarray, num_devices: int, slots_per_device: int,
              devices_per_node: int, rule: PlacementRule = PlacementRule.PAPER) -> np.ndarray:
    """[N, C] placement: replica instances by load per replica, heaviest first, each to the least-loaded free
    device (ties: lower device id) among the nodes holding the fewest copies of that expert, `rule` saying which
    nodes count. Compiled (`kernels.lpt_slots_paper`, `kernels.lpt_slots`)."""
    w = np.asarray(expert_loads, dtype=float)
    r = np.asarray(replicas, dtype=np.int64)
    if r.sum() != num_devices * slots_per_device:
        raise ValueError(f"replica counts sum to {r.sum()}, not N*C = {num_devices * slots_per_device}")
    per_rep = w / np.maximum(r, 1)
    kernel = kernels.lpt_slots_paper if rule is PlacementRule.PAPER else kernels.lpt_slots
    return kernel(per_rep, r, num_devices, slots_per_device, devices_per_node)
