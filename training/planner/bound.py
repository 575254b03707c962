"""The replica lower bound: no plan's busiest device computes fewer tokens than
max(mean device tokens, min over replica counts r (sum r = N*C, r_j >= 1) of max_j load_j / r_j).

Notation: N devices, E experts, C slots per device, L_j total tokens for expert j.
Some replica of j computes at least L_j / r_j tokens and its device at least that; water-filling (greedy increments
to the expert with the highest load per replica) gives the min over r exactly.
"""

from __future__ import annotations

import numpy as np

from training.planner import accel


def waterfill_replicas(expert_loads: np.ndarray, total_slots: int, jit: bool | None = None) -> np.ndarray:
    """[E] replica counts r >= 1 with sum r = total_slots minimising max_j L_j / r_j (ties: more to heavier experts).

    1. Start from r_j = max(1, floor(L_j / t)) with t = sum L / (slots - E), a feasible threshold.
    2. Hand the leftover slots one at a time to the expert with the highest L_j / r_j (classic greedy, exact).
    jit: `accel.resolve_jit` (the compiled greedy gives the same counts).
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
    # Step 2: at most 2E increments, each to the expert with the highest load per replica.
    if accel.resolve_jit(jit):
        return accel.kernels().greedy_increments(w, r, total_slots - int(r.sum()))
    for _ in range(total_slots - int(r.sum())):
        r[np.argmax(w / r)] += 1
    return r


def replica_lower_bound(loads: np.ndarray, num_devices: int, slots_per_device: int) -> float:
    """Lower bound on max device tokens of any plan for loads [N, E] (or expert totals [E])."""
    w = np.asarray(loads, dtype=float)
    if w.ndim == 2:
        w = w.sum(0)
    r = waterfill_replicas(w, num_devices * slots_per_device)
    return float(max(w.sum() / num_devices, np.max(w / r)))
