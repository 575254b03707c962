"""Fully Sharded Expert Parallel runtime (mechanism only: placements and routing fractions come from a planner)."""

from training.fsep.apply import (
    apply_deepspeed_moe,
    apply_ep,
    apply_fsdp_ep,
    apply_fsep,
    distributed_layers,
    export_reference,
    replace_moe_blocks,
)
from training.fsep.groups import FSEPGroups
from training.fsep.layer import DistributedMoE, EPMoE, FSEPMoE, default_placement

__all__ = ["DistributedMoE", "EPMoE", "FSEPGroups", "FSEPMoE", "apply_deepspeed_moe", "apply_ep", "apply_fsdp_ep",
           "apply_fsep", "default_placement", "distributed_layers", "export_reference", "replace_moe_blocks"]
