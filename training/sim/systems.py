"""The training systems the simulator compares, as data: which planner lays the experts out, how expert and dense
parameters are communicated, and whether that communication overlaps compute.

Notation: N devices, E experts, C expert slots per device.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class SystemName(str, Enum):
    megatron_ep = "megatron_ep"  # Megatron-LM dropless EP: E/D consecutive experts a device in EP groups of D
    # devices, replicated over the data-parallel groups (simulate_iteration's ep_degree)
    fsdp_ep = "fsdp_ep"  # the LAER-MoE paper's FSDP+EP baseline: static layout, experts FSDP-sharded
    flexmoe = "flexmoe"  # FlexMoE's replica moves (training.planner.flexmoe), replicated experts
    laer = "laer"  # LAER-MoE: FSEP with the paper's planner
    laer_plus = "laer_plus"  # FSEP with our planner


class ExpertComm(Enum):
    """How a device gets the expert weights it computes with, and where their gradients go."""

    REPLICATED = "replicated"  # full replicas stay resident; gradient all-reduce over each expert's replicas
    FSDP = "fsdp"  # ring all-gather of the device's C experts before use, ring reduce-scatter of their gradients
    FSEP = "fsep"  # restore all-to-all from [E, P/N] shards by the plan's layout, gradient all-to-all back


class DenseComm(Enum):
    """How the attention / router / norm parameters of a layer are kept in step."""

    DDP = "ddp"  # replicated; one ring all-reduce of the layer's gradients in backward
    FSDP = "fsdp"  # sharded over all devices: all-gather in forward and backward, reduce-scatter of gradients


class Prefetch(Enum):
    """How far ahead an overlapping system launches a layer's parameter communication (under comm_opt).

    The LAER-MoE paper's runtime (Hetu-Galvatron, laer-moe branch) wraps every layer as two FSDP units, the dense part
    (attention, norms, router) and, nested in it, the MoE layer, with FSDP forward prefetch and BACKWARD_PRE
    (galvatron/core/runtime/parallel.py, wrap_module_fsdp_manually), and sets FSDP's forward and backward prefetch
    limits to 2 units, or to FSDP's default 1 when ABLATION_APPROACH=no_comm_opt
    (galvatron/core/runtime/moe/prefetch/fsdp_patch.py, new_init_exec_order_data). That is the flag's only effect on
    communication (its one other read, prefetch/async_linear_programming.py, picks the planner's no_even / no_pq):
    the restore and gradient all-to-alls keep their own streams, and fsdp_patch.py runs the deferred gradient
    all-to-alls (get_delayed_gradient().execute_pending_gradinet) whatever the flag.
    """

    layer = "layer"  # limit 2: a layer's MoE weights are fetched from the start of the previous layer's experts
    # (training.fsep.schedule's order under comm_opt)
    unit = "unit"  # limit 1 (the paper's no_comm_opt): fetched when the layer's own dense unit starts, so only
    # its attention (and, in backward, its recomputed attention) hides them


@dataclass(frozen=True)
class System:
    name: SystemName
    planner: str  # training.planner registry name that lays the experts out
    expert_comm: ExpertComm
    dense_comm: DenseComm
    # Parameter / gradient communication runs beside compute (prefetch one layer ahead, gradients deferred one layer,
    # as training.fsep.schedule does under comm_opt and FSDP/DDP do with their prefetch and bucketing).
    overlap: bool = True
    # Slots per device from E / ep_degree (Megatron EP: whole experts, replicated across EP groups) rather than the
    # parallel config's C.
    ep_slots: bool = False


SYSTEMS: dict[SystemName, System] = {
    SystemName.megatron_ep: System(SystemName.megatron_ep, "fsdp_ep", ExpertComm.REPLICATED, DenseComm.DDP,
                                   ep_slots=True),
    SystemName.fsdp_ep: System(SystemName.fsdp_ep, "fsdp_ep", ExpertComm.FSDP, DenseComm.FSDP),
    SystemName.flexmoe: System(SystemName.flexmoe, "flexmoe", ExpertComm.REPLICATED, DenseComm.FSDP),
    SystemName.laer: System(SystemName.laer, "laer", ExpertComm.FSEP, DenseComm.FSDP),
    SystemName.laer_plus: System(SystemName.laer_plus, "laer_plus", ExpertComm.FSEP, DenseComm.FSDP),
}


def get_system(name: str | SystemName | System) -> System:
    """A system by name (or a System passed through)."""
    if isinstance(name, System):
        return name
    try:
        return SYSTEMS[SystemName(name)]
    except ValueError:
        raise ValueError(f"unknown system {name!r}; known: {[s.value for s in SystemName]}") from None
