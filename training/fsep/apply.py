"""Parallelism as a transform over a plain model: every MoE block is replaced by a distributed layer holding the same
weights, the rest of the model is left as it is (its dense parameters stay data parallel: the caller averages their
gradients, as DDP or DeepSpeed would).

Each transform accepts one `ReferenceMoE` (returns the layer), a `training.model.MoEDecoder`, or any module that
contains MoE blocks, including a Hugging Face `MixtralForCausalLM` (its `MixtralSparseMoeBlock`s become
`training.hf.HFMoEBlock` adapters around the distributed layer). A whole model is changed in place and returned.
The model must be identical on every device (same seed): each device takes its own part of the same weights. Move
the model to its device before the transform: a distributed layer is built where its block's weights are (or on
`device` when given) and keeps layout tensors that a later `model.to(...)` would not move.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from training.fsep.groups import FSEPGroups
from training.fsep.layer import DistributedMoE, EPMoE, FSEPMoE
from training.fsep.schedule import RestoreSchedule
from training.moe.reference import ReferenceMoE
from training.placement import Placement, fsdp_ep_placement

# Builds the distributed layer from a reference layer's weights.
LayerBuilder = Callable[[ReferenceMoE], nn.Module]


def _hf():
    """training.hf when transformers is loaded, else None. It is imported only when the caller already has: a model
    holding transformers' modules cannot exist otherwise, and `import training` must not need transformers."""
    if "transformers" not in sys.modules:
        return None
    from training import hf

    return hf


def replace_moe_blocks(model: nn.Module, build: LayerBuilder) -> nn.Module:
    """Replace every MoE block under `model` (depth first, in module order) by `build` of its weights; `model` itself
    when it is a block. Raises when there is none, so a transform never silently leaves a model unsharded."""

    hf = _hf()

    def convert(module: nn.Module) -> nn.Module | None:
        if isinstance(module, ReferenceMoE):
            return build(module)
        return None if hf is None else hf.convert_block(module, build)

    root = convert(model)
    if root is not None:
        return root
    found = 0

    def walk(parent: nn.Module) -> None:
        nonlocal found
        for name, child in parent.named_children():
            new = convert(child)
            if new is None:
                walk(child)
            else:
                setattr(parent, name, new)
                found += 1

    walk(model)
    if not found:
        raise ValueError(f"{type(model).__name__} holds no MoE block (ReferenceMoE or a Hugging Face sparse MoE block)")
    if hf is not None:
        hf.hook_new_blocks(model)
    return model


def _device(ref: ReferenceMoE, device) -> torch.device:
    """Where the distributed layer lives: `device` if given, else where the block's weights are."""
    return torch.device(device) if device is not None else ref.router.weight.device


def distributed_layers(model: nn.Module) -> list[DistributedMoE]:
    """The FSEP / EP layers of a transformed model in module order (= layer order), for layouts and load counts."""
    return [m for m in model.modules() if isinstance(m, DistributedMoE)]


def apply_fsep(model: nn.Module, groups: FSEPGroups, slots_per_device: int, placement: Placement | None = None,
               comm_opt: bool = True, keep_restored: bool = False, compute_dtype: torch.dtype | None = None,
               device=None, max_block_rows: int | None = None):
    """FSEPMoE for every MoE block, each holding this device's pieces of that block's experts, all starting from
    `placement` (None: round-robin); each layer is re-laid out on its own afterwards (`set_placement`). The layers
    share one `RestoreSchedule` in module (= forward) order: comm_opt, keep_restored and compute_dtype as FSEPMoE's
    (restore prefetch across layers, deferred gradient all-to-all, restore group; free or keep restored experts;
    bf16 compute over fp32 shards)."""

    def build(ref: ReferenceMoE) -> FSEPMoE:
        layer = FSEPMoE(ref.hidden, ref.ffn, ref.num_experts, ref.top_k, slots_per_device, groups, placement,
                        comm_opt=comm_opt, keep_restored=keep_restored, compute_dtype=compute_dtype,
                        device=_device(ref, device), max_block_rows=max_block_rows)
        return layer.load_reference(ref)

    return _share_schedule(replace_moe_blocks(model, build), comm_opt)


def apply_fsdp_ep(model: nn.Module, groups: FSEPGroups, slots_per_device: int, device=None,
                  max_block_rows: int | None = None, comm_opt: bool = True, keep_restored: bool = False):
    """The LAER-MoE paper's static baseline: FSEP storage with the fixed FSDP+EP layout, never re-laid out."""

    def build(ref: ReferenceMoE) -> FSEPMoE:
        placement = fsdp_ep_placement(groups.size, ref.num_experts, slots_per_device)
        layer = FSEPMoE(ref.hidden, ref.ffn, ref.num_experts, ref.top_k, slots_per_device, groups, placement,
                        comm_opt=comm_opt, keep_restored=keep_restored, device=_device(ref, device),
                        max_block_rows=max_block_rows)
        return layer.load_reference(ref)

    return _share_schedule(replace_moe_blocks(model, build), comm_opt)


def _share_schedule(model: nn.Module, comm_opt: bool) -> nn.Module:
    """One RestoreSchedule over the model's FSEP layers in module order, so each layer's restore is prefetched during
    its neighbour's compute."""
    layers = [m for m in model.modules() if isinstance(m, FSEPMoE)]
    schedule = RestoreSchedule(layers, comm_opt)
    for layer in layers:
        layer.schedule = schedule
    return model


def apply_ep(model: nn.Module, groups: FSEPGroups, device=None, max_block_rows: int | None = None):
    """Expert parallel without padding: whole experts E/N per device, exactly the routed tokens computed."""

    def build(ref: ReferenceMoE) -> EPMoE:
        return EPMoE(ref.hidden, ref.ffn, ref.num_experts, ref.top_k, groups, device=_device(ref, device),
                     max_block_rows=max_block_rows).load_reference(ref)

    return replace_moe_blocks(model, build)


def apply_deepspeed_moe(model: nn.Module, ep_size: int, drop_tokens: bool = False, capacity_factor: float = 1.0):
    """DeepSpeed-MoE (`deepspeed.moe.layer.MoE`) for every MoE block, experts split over ep_size devices; dropless
    (drop_tokens=False, every expert padded to the group's largest count) or capacity mode (capacity_factor).
    DeepSpeed builds its own groups over the default world, so ep_size must be the world size."""
    from training.fsep.deepspeed_ep import DeepSpeedEP

    if ep_size != dist.get_world_size():
        raise ValueError(f"apply_deepspeed_moe: ep_size = {ep_size} must equal the world size "
                         f"{dist.get_world_size()} (expert-data-parallel replicas are not supported)")
    groups = FSEPGroups(dist.group.WORLD, 1)  # DeepSpeed routes by itself: no node-local rule to feed
    return replace_moe_blocks(model, lambda ref: DeepSpeedEP(ref, groups, drop_tokens, capacity_factor))


@torch.no_grad()
def export_reference(layer: DistributedMoE) -> ReferenceMoE:
    """The single-process layer holding `layer`'s current weights (all-gathers the experts; every rank gets it)."""
    ref = ReferenceMoE(layer.hidden, layer.ffn, layer.num_experts, layer.top_k).to(layer.router.weight.device)
    ref.router.weight.copy_(layer.router.weight)
    for dst, src in zip((ref.w1, ref.w3, ref.w2), layer.gather_expert_weights()):
        dst.copy_(src)
    return ref
