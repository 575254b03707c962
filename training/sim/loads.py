"""Expert loads for the simulator: a SmartMoE trace sample rescaled to a model's devices, layers, experts and tokens.

Notation: R trace ranks, L_t trace layers, E_t trace experts; N devices, L layers, E experts, T tokens per device,
k routes per token.
"""

from __future__ import annotations

import numpy as np

from common.traces import ExpertLoadTrace
from training.rounding import largest_remainder


def trace_loads(trace: ExpertLoadTrace, num_devices: int, num_layers: int, num_experts: int, top_k: int,
                tokens_per_device: int, iteration: int = 0, microbatch: int = 0) -> np.ndarray:
    """[L, N, E] int64 routes of one micro-batch: every device sends exactly tokens_per_device * top_k routes.

    1. Ranks: R divisible by N merges ranks (`merge_ranks`); N divisible by R gives each trace rank's row to N/R
       devices (same proportions).
    2. Layers: layer l takes trace layer l * L_t // L (the trace's depth profile, stretched or cut).
    3. Experts: E_t divisible by E sums groups of E_t/E adjacent experts; E divisible by E_t splits each expert's
       share evenly over E/E_t experts.
    4. Each device's row is scaled to its route total by largest remainder (training.rounding).
    """
    for key, v in (("num_devices", num_devices), ("num_layers", num_layers), ("num_experts", num_experts),
                   ("top_k", top_k), ("tokens_per_device", tokens_per_device)):
        if int(v) != v or v < 1:
            raise ValueError(f"trace_loads: {key} must be a positive integer, got {v!r}")
    if not 0 <= iteration < trace.num_iterations:
        raise ValueError(f"trace_loads: iteration {iteration} outside [0, {trace.num_iterations})")
    if not 0 <= microbatch < trace.num_microbatches:
        raise ValueError(f"trace_loads: microbatch {microbatch} outside [0, {trace.num_microbatches})")
    r, e_t = trace.num_ranks, trace.num_experts
    counts = trace.counts[iteration, :, :, microbatch].astype(np.float64)  # [R, L_t, E_t]
    if r % num_devices == 0:  # Step 1
        counts = counts.reshape(num_devices, r // num_devices, *counts.shape[1:]).sum(1)
    elif num_devices % r == 0:
        counts = np.repeat(counts, num_devices // r, axis=0)
    else:
        raise ValueError(f"trace_loads: num_devices={num_devices} and the trace's {r} ranks: one must divide the other")
    counts = counts[:, np.arange(num_layers) * trace.num_layers // num_layers]  # Step 2, [N, L, E_t]
    if e_t % num_experts == 0:  # Step 3
        counts = counts.reshape(*counts.shape[:2], num_experts, e_t // num_experts).sum(-1)
    elif num_experts % e_t == 0:
        counts = np.repeat(counts, num_experts // e_t, axis=-1) / (num_experts // e_t)
    else:
        raise ValueError(f"trace_loads: num_experts={num_experts} and the trace's {e_t} experts: one must divide the other")
    counts = counts.transpose(1, 0, 2)  # [L, N, E]
    total = counts.sum(-1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError("trace_loads: a (layer, device) row of the trace sample holds no tokens")
    routes = tokens_per_device * top_k
    return largest_remainder(counts * (routes / total), np.full(counts.shape[:2], routes, dtype=np.int64))
