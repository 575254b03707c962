"""One layer's layout as a forward sees it: the placement, the routing proportions and what the phases derive from
them, built once per `set_placement` and captured by each forward, so its recompute and backward use the layout of
that forward even when `set_placement` ran in between.

Notation: N devices, E experts, C slots per device, U_r <= C distinct experts on device r (a duplicate replica of
an expert on one device is restored, computed and sent once).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from training.placement import Placement


@dataclass(frozen=True)
class LayerLayout:
    # [N, C] expert per slot.
    placement: Placement
    # [N, E, N] a planner's routing proportions (source i, expert j -> device d); None: the FSEP rule.
    routing_fractions: np.ndarray | None
    # [N, C] placement.slots as a tensor on the layer's device.
    slots: torch.Tensor
    # [N*C] flat slot ids (device-major) sorted by expert: routes sorted by expert map onto this sequence.
    slots_by_expert: np.ndarray
    # [C] for each of my slots, the row of my restored weights that computes its tokens (rows are my distinct
    # experts in first-appearance order, so a duplicate uses its first copy's row).
    compute_slot: np.ndarray
    # [sum_r U_r] the distinct experts of every device, device-major, each device's in first-appearance order: the
    # rows restored on each device, and the order of the restore's send buffer.
    restored: torch.Tensor
    # [N] U_r, the restored rows of each device.
    restored_counts: tuple[int, ...]

    @classmethod
    def build(cls, placement: Placement, routing_fractions: np.ndarray | None, rank: int,
              device: torch.device | str | None) -> LayerLayout:
        distinct = [_first_appearance(row) for row in placement.slots]
        mine = placement.slots[rank]
        rows = {int(j): i for i, j in enumerate(distinct[rank])}
        return cls(placement, routing_fractions, torch.tensor(placement.slots, device=device),
                   np.argsort(placement.slots.ravel(), kind="stable"),
                   np.array([rows[int(j)] for j in mine], dtype=np.int64),
                   torch.tensor(np.concatenate(distinct), dtype=torch.int64, device=device),
                   tuple(len(d) for d in distinct))


def _first_appearance(row: np.ndarray) -> np.ndarray:
    """The distinct values of row in the order they first occur."""
    _, first = np.unique(row, return_index=True)
    return row[np.sort(first)]
