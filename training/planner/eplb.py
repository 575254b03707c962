"""DeepSeek's expert-parallel load balancer (EPLB), written from its published description.

Notation: N devices, E experts, C slots per device, G devices per node, K nodes, w [E] tokens per expert.
Token sources are ignored: replicas of an expert share its load equally. Hierarchical when the expert groups split
evenly over nodes and each node can hold its experts; global otherwise.
"""

from __future__ import annotations

import numpy as np

from training.planner import kernels
from training.planner.base import Plan, Planner


def balanced_packing(weights: np.ndarray, num_packs: int) -> np.ndarray:
    """[items] pack of each item: heaviest first to the lightest pack that is not full (ties: lower pack); every pack
    gets items / num_packs items."""
    items = weights.size
    if items % num_packs:
        raise ValueError(f"{items} items do not split into {num_packs} equal packs")
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    return kernels.pack_balanced(weights, np.argsort(-weights, kind="stable"), num_packs)


class EPLB(Planner):
    name = "eplb"

    def __init__(self, *args, num_groups: int | None = None, **kw):
        super().__init__(*args, **kw)
        self.num_groups = num_groups  # expert groups packed to nodes; None: one group per node

    def _plan(self, loads: np.ndarray) -> Plan:
        return self.fsep_plan(loads, eplb_placement(loads, self.n, self.c, self.g, self.num_groups))


def eplb_placement(loads: np.ndarray, n: int, c: int, g: int, num_groups: int | None = None) -> np.ndarray:
    """[N, C] EPLB layout for loads [N, E] (only the expert totals matter).

    1. Pack expert groups to nodes (equal group count per node) by group load; global (not hierarchical): all
       experts form one group on one node of all N devices.
    2. Per node: one replica per expert, the node's other slots one at a time to the expert with the highest load
       per replica (the greedy of `bound.add_replicas`).
    3. Per node: replicas (weight w / r) packed to the node's devices with C each (`balanced_packing`).
    Steps 2 and 3 run compiled (`kernels.eplb_node_layouts`).
    """
    w = loads.sum(0).astype(float)
    e = w.size
    k = n // g
    groups = num_groups or k
    hierarchical = e % groups == 0 and groups % k == 0 and g * c >= e // k
    if not hierarchical:
        return kernels.eplb_node_layouts(w, np.zeros(1, dtype=np.int64), e, 1, n, c)
    size = e // groups
    node_of_group = balanced_packing(w.reshape(groups, size).sum(1), k)  # Step 1
    return kernels.eplb_node_layouts(w, node_of_group, size, k, g, c)
