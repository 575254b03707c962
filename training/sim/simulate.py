"""Per-layer and per-iteration time of an MoE model on a cluster for one training system.

Notation: L layers, N devices, E experts, C slots per device, G devices per node, k routes per token.
Per layer i (one micro-batch, raw terms from `training.sim.costs`): A_i attention forward, X_i expert forward of the
busiest device, D_i / K_i dispatch / combine all-to-all, Pf_i / Pb_i parameter communication before the forward /
backward, Gr_i gradient communication; r = 1 with activation recompute, else 0.

  forward  = A + D + X + K + exposed_f
  backward = (2 + r)(A + X) + (1 + r)(D + K) + exposed_b          (backward compute twice the forward; a recompute
                                                                   reruns the whole forward, token all-to-alls too)
Overlap (System.overlap and comm_opt; training.fsep.schedule's order, communication never overlapping the token
all-to-alls, whose links it would share):
  forward:  the weights of layer i are fetched from the start of layer i-1's expert compute: hidden under
            X_{i-1} + A_i, so exposed_f_i = max(0, Pf_i - X_{i-1} - A_i) (X_{-1} = 0: layer 0 starts its own fetch).
  backward: during layer i's backward (compute W_i = (2 + r)(A_i + X_i)) the stream carries layer i-1's weights
            (launched when i's backward starts) and layer i+1's deferred gradients (waited when i's are launched):
            exposed_b_i = max(0, Pb_{i-1} + Gr_{i+1} - W_i); Pb_{L-1} (nothing before it) and Gr_0 (the end of the
            backward) are exposed whole, counted in layers L-1 and 0.
  Prefetch.unit (the paper's no_comm_opt: FSDP prefetch limit 1 over the two FSDP units of a layer, `Prefetch`):
  layer i's weights are fetched when its own dense unit starts, hidden only under its attention:
            exposed_f_i = max(0, Pf_i - A_i); in backward under its recomputed attention, r A_i (nothing without
            recompute), while layer i+1's deferred gradients still run beside layer i's backward on the same stream:
            exposed_b_i = e_i + max(0, min(Pb_i, r A_i) + Gr_{i+1} - W_i), e_i = max(0, Pb_i - r A_i); Gr_0 exposed
            whole in layer 0.
  Without overlap (comm_opt False: training.fsep.schedule's synchronous mode) every Pf, Pb, Gr is exposed whole in
  its own layer.
Token all-to-alls are never hidden (no system here overlaps them with compute).

Per device (SimResult.device_expert_s / device_alltoall_s, per iteration: all layers, all micro-batches), measured
as the LAER-MoE paper's breakdown measures a rank: expert_d = (3 + r) X_{i,d} summed, the device's own expert
compute; an all-to-all is a barrier, so the combine after the experts (and, in backward, the dispatch after the
expert backward) returns only when the slowest device has finished its experts, and a device's all-to-all time is
its own transfer plus that wait: alltoall_d = (2 + 2r)(D_{i,d} + K_{i,d}) + (3 + r)(max_d' X_{i,d'} - X_{i,d}) summed,
where D_{i,d} / K_{i,d} are the device's own seconds in one dispatch / combine (`alltoall_device_times`). Hence
alltoall_d + expert_d is the same busiest-expert time on every device, plus its own transfers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np

from common.costmodel import ComputeModel
from common.topology import ClusterSpec
from training.model import ModelConfig
from training.planner import make_planner
from training.planner.evaluate import quota_routing
from training.planner.objective import PlanObjective
from training.routing import fsep_routing
from training.sim.calibration import default_compute
from training.sim.costs import Bytes, LayerCosts, NonExpert, layer_costs
from training.sim.systems import Prefetch, System, SystemName, get_system


@dataclass(frozen=True)
class Breakdown:
    """Seconds of one layer (or their sum) for one micro-batch, forward and backward together."""

    attention: float  # attention + router forward, backward (and recompute)
    expert: float  # expert compute of the busiest device, forward, backward (and recompute)
    alltoall: float  # token dispatch + combine, forward and backward (and recompute)
    param_comm: float  # restore / all-gather / reduce-scatter / all-reduce / gradient all-to-all, all of it
    exposed: float  # the part of param_comm on the critical path
    total: float  # attention + expert + alltoall + exposed

    @property
    def hidden(self) -> float:
        """param_comm overlapped with compute."""
        return self.param_comm - self.exposed

    def __add__(self, other: Breakdown) -> Breakdown:
        return Breakdown(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def scaled(self, k: float) -> Breakdown:
        return Breakdown(*(getattr(self, f.name) * k for f in fields(self)))


@dataclass(frozen=True)
class SimResult:
    system: SystemName
    layers: tuple[Breakdown, ...]  # [L] per layer, one micro-batch
    max_tokens: np.ndarray  # [L] int64 routes computed by the busiest device, per layer
    head_s: float  # LM-head compute (forward + backward) of one micro-batch
    microbatches: int  # micro-batches per iteration (each with the same loads)
    # [N] seconds per iteration (all layers and micro-batches) of each device's own expert compute, forward,
    # backward (and recompute); the module docstring defines both.
    device_expert_s: np.ndarray
    # [N] seconds per iteration each device spends inside token all-to-alls: its own transfers plus the wait for the
    # slowest device's experts before each all-to-all that follows expert compute.
    device_alltoall_s: np.ndarray

    @property
    def layer_sum(self) -> Breakdown:
        """Sum over layers, one micro-batch."""
        out = self.layers[0]
        for b in self.layers[1:]:
            out = out + b
        return out

    @property
    def iteration(self) -> Breakdown:
        """Sum over layers and micro-batches (head excluded)."""
        return self.layer_sum.scaled(self.microbatches)

    @property
    def iteration_s(self) -> float:
        return self.microbatches * (self.layer_sum.total + self.head_s)


def _expose(costs: list[LayerCosts], overlap: bool, recompute: bool,
            prefetch: Prefetch = Prefetch.layer) -> tuple[np.ndarray, np.ndarray]:
    """(exposed forward [L], exposed backward [L]) seconds of parameter / gradient communication (module docstring)."""
    pf = np.array([c.param_fwd for c in costs])
    pb = np.array([c.param_bwd for c in costs])
    gr = np.array([c.grad for c in costs])
    if not overlap:
        return pf, pb + gr
    a = np.array([c.attention_fwd for c in costs])
    x = np.array([c.expert_fwd for c in costs])
    r = 1.0 if recompute else 0.0
    w = (2.0 + r) * (a + x)
    later_grads = np.concatenate([gr[1:], [0.0]])  # Gr_{i+1}, deferred into layer i's backward
    if prefetch is Prefetch.unit:
        fwd = np.maximum(0.0, pf - a)
        hidden = np.minimum(pb, r * a)  # the part of Pb_i the recomputed attention hides
        bwd = (pb - hidden) + np.maximum(0.0, hidden + later_grads - w)
    else:
        fwd = np.maximum(0.0, pf - np.concatenate([[0.0], x[:-1]]) - a)
        stream = np.concatenate([[0.0], pb[:-1]]) + later_grads
        bwd = np.maximum(0.0, stream - w)
        bwd[-1] += pb[-1]
    bwd[0] += gr[0]
    return fwd, bwd


def simulate_iteration(model: ModelConfig, cluster: ClusterSpec, system: str | SystemName | System,
                       loads: np.ndarray, slots_per_device: int, compute: ComputeModel | None = None,
                       comm_opt: bool = True, recompute: bool = False, microbatches: int = 1,
                       seq_len: int | None = None, plan_loads: np.ndarray | None = None, nbytes: Bytes | None = None,
                       planner_options: dict | Sequence[dict] | None = None, non_expert: NonExpert | None = None,
                       ep_degree: int | None = None, prefetch: Prefetch = Prefetch.layer) -> SimResult:
    """Simulated training iteration.

    loads: [L, N, E] integer routes from source device i to expert j in layer l, one micro-batch (each device sends
    its tokens times k). plan_loads: what the planner plans each layer from (default: loads, an oracle plan; pass an
    earlier window for the lag the runtime has). comm_opt False serialises every parameter / gradient
    communication (training.fsep.schedule's comm_opt=False). prefetch: how far ahead an overlapping system fetches
    weights under comm_opt (`Prefetch`; Prefetch.unit is what the paper's no_comm_opt ablation switches to).
    compute: default `calibration.default_compute(cluster)`. planner_options: keyword options of the system's planner,
    one dict for every layer or a sequence of L (layer l planned by a planner built from the l-th: a FlexMoE layout
    that persists differs per layer).
    non_expert: attention-kernel efficiency and memory-bound work beyond `compute` (default: none).
    ep_degree: devices per expert-parallel group of an `ep_slots` system (Megatron EP): device d holds the E/D
    consecutive experts of group rank d mod D, and the D-device groups repeat over data-parallel replicas; default
    min(N, E).

    1. The system's planner (training.planner registry, on the planner's own objective for this model and cluster)
       lays each layer out; its routing rule (FSEP rule, or the plan's quotas) splits the loads over the replicas.
    2. Raw per-layer costs (`training.sim.costs.layer_costs`).
    3. Overlap as the module docstring says; sum over layers and micro-batches.
    """
    sys_ = get_system(system)
    n, g, e = cluster.num_devices, cluster.devices_per_node, model.num_experts
    loads = _check(loads, "loads", (model.num_layers, n, e))
    plan_loads = loads if plan_loads is None else _check(plan_loads, "plan_loads", (model.num_layers, n, e))
    if int(microbatches) != microbatches or microbatches < 1:
        raise ValueError(f"microbatches must be a positive integer, got {microbatches!r}")
    ep = min(n, e) if ep_degree is None else ep_degree
    if sys_.ep_slots and (ep < 1 or n % ep or e % ep):
        raise ValueError(f"ep_degree={ep_degree}: must divide both N={n} devices and E={e} experts")
    c = e // ep if sys_.ep_slots else slots_per_device
    if int(c) != c or c < 1 or n * c < e:
        raise ValueError(f"slots_per_device={slots_per_device}: N*C = {n}*{c} slots cannot hold E={e} experts")
    # Megatron EP's layout: group rank d mod D holds E/D consecutive experts.
    ep_layout = ((np.arange(n) % ep)[:, None] * c + np.arange(c)[None, :]) if sys_.ep_slots else None  # [N, C]
    compute = compute or default_compute(cluster)
    seq_len = seq_len or model.max_seq_len
    objective = PlanObjective.for_model(cluster, model.hidden, model.ffn, recompute, compute)
    if planner_options is None or isinstance(planner_options, Mapping):
        planners = [make_planner(sys_.planner, n, int(c), g, objective, **(planner_options or {}))] * model.num_layers
    elif len(planner_options) == model.num_layers:
        planners = [make_planner(sys_.planner, n, int(c), g, objective, **o) for o in planner_options]
    else:
        raise ValueError(f"planner_options: one dict, or one per layer (L={model.num_layers}), got "
                         f"{len(planner_options)}")
    costs = []
    for planner, layer_loads, layer_plan_loads in zip(planners, loads, plan_loads):  # Step 1, 2
        plan = planner.plan(layer_plan_loads) if ep_layout is None else planner.fsep_plan(layer_plan_loads, ep_layout)
        if plan.fsep_routed:
            routing = fsep_routing(layer_loads, plan.layout, g)
        else:
            routing = quota_routing(plan, layer_loads, g)
        costs.append(layer_costs(model, cluster, sys_, compute, layer_loads.sum(1) / model.top_k, routing,
                                 plan.layout, seq_len, nbytes or Bytes(), non_expert))
    exp_f, exp_b = _expose(costs, sys_.overlap and comm_opt, recompute, Prefetch(prefetch))  # Step 3
    r = 1.0 if recompute else 0.0
    layers = tuple(
        Breakdown(attention=(3 + r) * k.attention_fwd, expert=(3 + r) * k.expert_fwd,
                  alltoall=(2 + 2 * r) * (k.dispatch + k.combine), param_comm=k.param_fwd + k.param_bwd + k.grad,
                  exposed=ef + eb,
                  total=(3 + r) * (k.attention_fwd + k.expert_fwd) + (2 + 2 * r) * (k.dispatch + k.combine) + ef + eb)
        for k, ef, eb in zip(costs, exp_f, exp_b)
    )
    head_tokens = loads[0].sum(1).max() / model.top_k
    head = 3 * compute.time(2.0 * head_tokens * model.hidden * model.vocab_size)
    x = np.stack([k.expert_fwd_devices for k in costs])  # [L, N]
    own = np.stack([k.dispatch_devices + k.combine_devices for k in costs])  # [L, N]
    wait = x.max(1, keepdims=True) - x  # [L, N]
    device_expert = microbatches * (3 + r) * x.sum(0)
    device_alltoall = microbatches * ((2 + 2 * r) * own + (3 + r) * wait).sum(0)
    return SimResult(sys_.name, layers, np.array([k.max_tokens for k in costs], dtype=np.int64), head,
                     int(microbatches), device_expert, device_alltoall)


def _check(a, name: str, shape: tuple[int, int, int]) -> np.ndarray:
    a = np.asarray(a)
    if a.shape != shape:
        raise ValueError(f"{name} must be [L, N, E] = {list(shape)} (model layers, cluster devices, model experts), "
                         f"got shape {list(a.shape)}")
    if a.dtype.kind not in "iu" and not (a.dtype.kind == "f" and np.all(np.mod(a, 1) == 0)):
        raise ValueError(f"{name} must hold integer route counts, got dtype {a.dtype}")
    if np.any(a < 0):
        raise ValueError(f"{name} must be non-negative")
    return a.astype(np.int64)
