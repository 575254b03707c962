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
from training.routing import SlotShares, slot_shares


@dataclass(frozen=True)
class LayerLayout:
    # [N, C] expert per slot.
    placement: Placement
    # [N, E, N] a planner's routing proportions (source i, expert j -> device d); None: the FSEP rule.
    routing_fractions: np.ndarray | None
    # [N, C] placement.slots as a tensor on the layer's device.
    slots: torch.Tensor
    # [N*C] flat slot ids (device-major) sorted by expert, on the layer's device: routes sorted by expert map onto
    # this sequence.
    slots_by_expert: torch.Tensor
    # [C] for each of my slots, the row of my restored weights that computes its tokens (rows are my distinct
    # experts in first-appearance order, so a duplicate uses its first copy's row).
    compute_slot: np.ndarray
    # [sum_r U_r] the distinct experts of every device, device-major, each device's in first-appearance order: the
    # rows restored on each device, and the order of the restore's send buffer.
    restored: torch.Tensor
    # [N] U_r, the restored rows of each device.
    restored_counts: tuple[int, ...]
    # The routing rule's tables for my row, on the layer's device: dispatch splits counts there with no host data.
    shares: SlotShares
    # [E] experts with no replica (the rule cannot place their tokens).
    unplaced: np.ndarray
    # [N*C] restored row (compute group) of each received (source, slot) block in wire order, on the host and on
    # the device; duplicates of an expert on my device share their first copy's row.
    block_group_host: np.ndarray
    block_group: torch.Tensor
    # [N*C] wire blocks in grouped order: by row, then wire order (stable), so each row's tokens are contiguous.
    block_order: list[int]

    @property
    def num_rows(self) -> int:
        """U: my restored rows, the groups of the expert compute."""
        return int(self.compute_slot.max()) + 1

    @classmethod
    def build(cls, placement: Placement, routing_fractions: np.ndarray | None, rank: int, devices_per_node: int,
              device: torch.device | str | None) -> LayerLayout:
        distinct = [_first_appearance(row) for row in placement.slots]
        mine = placement.slots[rank]
        rows = {int(j): i for i, j in enumerate(distinct[rank])}
        compute_slot = np.array([rows[int(j)] for j in mine], dtype=np.int64)
        block_group = np.tile(compute_slot, placement.slots.shape[0])
        shares = slot_shares(placement, [rank], devices_per_node,
                             None if routing_fractions is None else routing_fractions[rank:rank + 1], device)
        return cls(placement, routing_fractions, torch.tensor(placement.slots, device=device),
                   torch.from_numpy(np.argsort(placement.slots.ravel(), kind="stable")).to(device),
                   compute_slot,
                   torch.tensor(np.concatenate(distinct), dtype=torch.int64, device=device),
                   tuple(len(d) for d in distinct), shares, placement.replica_counts() == 0,
                   block_group, torch.from_numpy(block_group).to(device),
                   np.argsort(block_group, kind="stable").tolist())


def _first_appearance(row: np.ndarray) -> np.ndarray:
    """The distinct values of row in the order they first occur."""
    _, first = np.unique(row, return_index=True)
    return row[np.sort(first)]
