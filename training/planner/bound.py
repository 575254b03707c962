"""Replica counts by water-filling, and the replica lower bound: no plan's busiest device computes fewer tokens than
max(mean device tokens, min over replica counts r (sum r = N*C, r_j >= 1) of max_j load_j / r_j).

Notation: N devices, E experts, C slots per device, L_j total tokens for expert j.
Some replica of j computes at least L_j / r_j tokens and its device at least that; water-filling (greedy increments
to the expert with the highest load per replica) gives the min over r exactly.
"""

from __future__ import annotations

import numpy as np

from training.planner import kernels


def add_replicas(expert_loads: np.ndarray, replicas: np.ndarray, extra: int) -> np.ndarray:
    """`extra` times, one more replica to the expert with the largest load per replica L_j / r_j (ties: lower id):
    the greedy step of water-filling and of EPLB. Returns new counts [E] int64."""
    w = np.ascontiguousarray(expert_loads, dtype=np.float64)
    r = np.array(replicas, dtype=np.int64)  # a copy: the kernel updates it in place
    return kernels.greedy_increments(w, r, int(extra))


def waterfill_replicas(expert_loads: np.ndarray, total_slots: int) -> np.ndarray:
    """[E] replica counts r >= 1 with sum r = total_slots minimising max_j L_j / r_j (ties: more to heavier experts).

    1. Start from r_j = max(1, floor(L_j / t)) with t = sum L / (slots - E), a feasible threshold.
    2. Hand the leftover slots one at a time to the expert with the highest L_j / r_j (`add_replicas`, exact).
    """
    w = np.asarray(expert_loads, dtype=float)
    e = w.size
    if total_slots < e:
        raise ValueError(f"{total_slots} slots cannot hold {e} experts (need N*C >= E)")
    if w.max(initial=0.0) <= 0:
        r = np.full(e, total_slots // e, dtype=np.int64)
        r[: total_slots - r.sum()] += 1
        return r
    # Step 1: t = sum L / (slots - E) is feasible (sum_j max(1, floor(L_j / t)) <= slots), so t >= t*, and the
    # counts floor(L_j / t) sit below an optimal vector; greedy increments from below stay optimal.
    if total_slots > e:
        r = np.maximum(1, np.floor(w * (total_slots - e) / w.sum())).astype(np.int64)
    else:
        r = np.ones(e, dtype=np.int64)
    # Step 2: at most 2E increments.
    return add_replicas(w, r, total_slots - int(r.sum()))


def replica_lower_bound(loads: np.ndarray, num_devices: int, slots_per_device: int) -> float:
    """Lower bound on max device tokens of any plan for loads [N, E] (or expert totals [E])."""
    w = np.asarray(loads, dtype=float)
    if w.ndim == 2:
        w = w.sum(0)
    r = waterfill_replicas(w, num_devices * slots_per_device)
    return float(max(w.sum() / num_devices, np.max(w / r)))
