"""Parallelism as a transform: build the distributed layers from a plain ReferenceMoE's weights."""

from __future__ import annotations

import torch

from training.fsep.groups import FSEPGroups
from training.fsep.layer import DistributedMoE, EPMoE, FSEPMoE
from training.moe.reference import ReferenceMoE
from training.placement import Placement, fsdp_ep_placement


def apply_fsep(ref: ReferenceMoE, groups: FSEPGroups, slots_per_device: int, placement: Placement | None = None,
               overlap_restore: bool = True, device=None, max_block_rows: int | None = None) -> FSEPMoE:
    """FSEPMoE holding this device's pieces of `ref`'s experts (ref must be identical on every device)."""
    layer = FSEPMoE(ref.hidden, ref.ffn, ref.num_experts, ref.top_k, slots_per_device, groups, placement,
                    overlap_restore=overlap_restore, device=device, max_block_rows=max_block_rows)
    return layer.load_reference(ref)


def apply_fsdp_ep(ref: ReferenceMoE, groups: FSEPGroups, slots_per_device: int, device=None,
                  max_block_rows: int | None = None) -> FSEPMoE:
    """The LAER-MoE paper's static baseline: FSEP storage with the fixed FSDP+EP layout, never re-laid out."""
    placement = fsdp_ep_placement(groups.size, ref.num_experts, slots_per_device)
    return apply_fsep(ref, groups, slots_per_device, placement, device=device, max_block_rows=max_block_rows)


def apply_ep(ref: ReferenceMoE, groups: FSEPGroups, device=None, max_block_rows: int | None = None) -> EPMoE:
    """Expert parallel without padding: whole experts E/N per device, exactly the routed tokens computed."""
    return EPMoE(ref.hidden, ref.ffn, ref.num_experts, ref.top_k, groups, device=device,
                 max_block_rows=max_block_rows).load_reference(ref)


@torch.no_grad()
def export_reference(layer: DistributedMoE) -> ReferenceMoE:
    """The single-process layer holding `layer`'s current weights (all-gathers the experts; every rank gets it)."""
    ref = ReferenceMoE(layer.hidden, layer.ffn, layer.num_experts, layer.top_k).to(layer.router.weight.device)
    ref.router.weight.copy_(layer.router.weight)
    for dst, src in zip((ref.w1, ref.w3, ref.w2), layer.gather_expert_weights()):
        dst.copy_(src)
    return ref
