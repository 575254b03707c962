"""Parallelism as a transform: build the distributed layers from a plain ReferenceMoE's weights."""

from __future__ import annotations

import torch
import torch.distributed as dist

from training.fsep.groups import FSEPGroups
from training.fsep.layer import EPMoE, FSEPMoE
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
def gather_expert_weights(layer: FSEPMoE, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All-gather the shards (or their gradients) into full (w1 [E,F,H], w3 [E,F,H], w2 [E,H,F]); for checks."""
    src = layer.expert_shard.grad if grad else layer.expert_shard
    parts = [torch.empty_like(src) for _ in range(layer.groups.size)]
    dist.all_gather(parts, src.contiguous(), group=layer.groups.ep)
    flat = torch.cat(parts, 1)[:, : layer.num_elements]
    e, f, h = layer.num_experts, layer.ffn, layer.hidden
    return (flat[:, : f * h].reshape(e, f, h), flat[:, f * h: 2 * f * h].reshape(e, f, h),
            flat[:, 2 * f * h:].reshape(e, h, f))


@torch.no_grad()
def export_reference(layer: FSEPMoE) -> ReferenceMoE:
    """The single-process layer holding `layer`'s current weights (all-gathers the shards; every rank gets it)."""
    ref = ReferenceMoE(layer.hidden, layer.ffn, layer.num_experts, layer.top_k).to(layer.router.weight.device)
    ref.router.weight.copy_(layer.router.weight)
    if hasattr(layer, "local_experts"):  # EPMoE: whole experts per rank
        parts = [torch.empty_like(layer.local_experts) for _ in range(layer.groups.size)]
        dist.all_gather(parts, layer.local_experts.detach().contiguous(), group=layer.groups.ep)
        flat = torch.cat(parts)
        e, f, h = layer.num_experts, layer.ffn, layer.hidden
        weights = (flat[:, : f * h].reshape(e, f, h), flat[:, f * h: 2 * f * h].reshape(e, f, h),
                   flat[:, 2 * f * h:].reshape(e, h, f))
    else:
        weights = gather_expert_weights(layer)
    for dst, src in zip((ref.w1, ref.w3, ref.w2), weights):
        dst.copy_(src)
    return ref
