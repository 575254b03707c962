"""Fully Sharded Expert Parallel runtime (mechanism only: placements and routing fractions come from a planner)."""

from training.fsep.apply import apply_ep, apply_fsdp_ep, apply_fsep, export_reference
from training.fsep.groups import FSEPGroups
from training.fsep.layer import DistributedMoE, EPMoE, FSEPMoE, default_placement

__all__ = ["DistributedMoE", "EPMoE", "FSEPGroups", "FSEPMoE", "apply_ep", "apply_fsdp_ep", "apply_fsep",
           "default_placement", "export_reference"]
