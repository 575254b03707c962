"""Where each piece of the model sits under a DeploymentPlan (pure geometry, no timing).

Notation: L layers; a model is L + 2 units (0 the input embedding, 1..L the layers, L + 1 the LM head); a replica of
(tp, pp) on its devices [s * tp + i for stage s, TP rank i] gives device s * tp + i the rectangle
units(stage s) x columns [i / tp, (i + 1) / tp). Columns are the share of every unit's output features a TP rank owns
(Megatron/vLLM split attention by heads and the MLP by neurons, QKV and gate/up by columns and the output
projections by the matching rows, the vocabulary of the embedding and LM head by rows), so rank i of TP degree t holds
exactly the same features in every unit and two layouts overlap in the intersection of their fractions. KV of a
request follows the attention heads: the same rectangle, with the embedding and LM head holding none.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from common.topology import ClusterSpec
from serving.costmodel.models import ModelSpec
from serving.scheduler.plan import DeploymentPlan
from serving.switching.plan import Shard


def stage_layers(num_layers: int, pp: int) -> list[tuple[int, int]]:
    """[pp] (first, end) layer of each pipeline stage, split as vLLM's get_pp_indices does: evenly, the remainder one
    layer each to the stages before the last (the cost model's even 1 / pp split when pp divides L)."""
    if not 1 <= pp <= num_layers:
        raise ValueError(f"pp {pp} must be between 1 and the model's {num_layers} layers")
    sizes = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        sizes[-i] += 1
    ends = np.cumsum(sizes)
    return [(int(e - n), int(e)) for e, n in zip(ends, sizes)]


def stage_units(num_layers: int, pp: int) -> list[tuple[int, int]]:
    """[pp] (first, end) unit of each stage: its layers, the embedding with the first, the LM head with the last."""
    units = [(a + 1, b + 1) for a, b in stage_layers(num_layers, pp)]
    units[0] = (0, units[0][1])
    units[-1] = (units[-1][0], num_layers + 2)
    return units


def unit_weight_bytes(model: ModelSpec) -> np.ndarray:
    """[L + 2] bytes of each unit's weights (they sum to model.weight_bytes)."""
    table = model.vocab * model.hidden * model.bytes_per_param
    return np.array([table] + [model.params_per_layer * model.bytes_per_param] * model.num_layers + [table], float)


def unit_kv_bytes(model: ModelSpec) -> np.ndarray:
    """[L + 2] KV bytes of one token in each unit (0 for the embedding and LM head; they sum to kv_bytes_per_token)."""
    return np.array([0.0] + [model.kv_bytes_per_token / model.num_layers] * model.num_layers + [0.0])


def shard_bytes(shard: Shard, unit_bytes: np.ndarray) -> float:
    return float(unit_bytes[shard.first_unit:shard.end_unit].sum() * (shard.col_hi - shard.col_lo))


def validate_plan(plan: DeploymentPlan, cluster: ClusterSpec, model: ModelSpec, name: str) -> None:
    """One-line ValueError for a plan the cluster cannot hold: too many GPUs, a device listed twice or out of range,
    a replica's device count off its tp * pp, a TP group across nodes, more stages than layers."""
    if plan.num_gpus > cluster.num_devices:
        raise ValueError(f"{name} plan needs {plan.num_gpus} GPUs; cluster {cluster.name} has {cluster.num_devices}")
    if len(plan.devices) != len(plan.replicas):
        raise ValueError(f"{name} plan: {len(plan.replicas)} replicas but {len(plan.devices)} device lists")
    seen: set[int] = set()
    for k, (cfg, devs) in enumerate(zip(plan.replicas, plan.devices)):
        if len(devs) != cfg.gpus:
            raise ValueError(f"{name} replica {k} ({cfg}) lists {len(devs)} devices, needs {cfg.gpus}")
        for d in devs:
            if not 0 <= d < cluster.num_devices:
                raise ValueError(f"{name} replica {k}: device {d} out of range for {cluster.num_devices} devices")
            if d in seen:
                raise ValueError(f"{name} replica {k}: device {d} is already used by another replica")
            seen.add(d)
        for s in range(cfg.pp):
            if len({cluster.node_of(d) for d in devs[s * cfg.tp:(s + 1) * cfg.tp]}) > 1:
                raise ValueError(f"{name} replica {k} ({cfg}): the TP group of stage {s} crosses nodes "
                                 f"(devices {devs[s * cfg.tp:(s + 1) * cfg.tp]})")
        if not 1 <= cfg.pp <= model.num_layers:
            raise ValueError(f"{name} replica {k} ({cfg}): pp must be between 1 and {model.name}'s "
                             f"{model.num_layers} layers")


def replica_roles(num_layers: int, tp: int, pp: int) -> list[Shard]:
    """[tp * pp] the rectangle each position of a replica's device list holds (stage-major, then TP rank)."""
    return [Shard(u0, u1, Fraction(i, tp), Fraction(i + 1, tp))
            for u0, u1 in stage_units(num_layers, pp) for i in range(tp)]


def holdings(plan: DeploymentPlan | None, num_layers: int) -> dict[int, tuple[int, Shard]]:
    """device -> (replica index, the rectangle it holds) under a plan (empty for None)."""
    if plan is None:
        return {}
    out = {}
    for k, (cfg, devs) in enumerate(zip(plan.replicas, plan.devices)):
        for d, shard in zip(devs, replica_roles(num_layers, cfg.tp, cfg.pp)):
            out[d] = (k, shard)
    return out


def grid_cells(need: Shard, pieces: list[Shard]) -> list[Shard]:
    """`need` cut at every edge of the pieces that overlap it: each cell then lies wholly inside or outside each
    piece (the smallest units a source can be chosen for without splitting what one device holds)."""
    units, cols = {need.first_unit, need.end_unit}, {need.col_lo, need.col_hi}
    for p in pieces:
        if need.intersect(p) is None:
            continue
        units |= {u for u in (p.first_unit, p.end_unit) if need.first_unit < u < need.end_unit}
        cols |= {c for c in (p.col_lo, p.col_hi) if need.col_lo < c < need.col_hi}
    us, cs = sorted(units), sorted(cols)
    return [Shard(u0, u1, c0, c1) for u0, u1 in zip(us, us[1:]) for c0, c1 in zip(cs, cs[1:])]


def describe(shard: Shard, num_layers: int) -> str:
    """e.g. 'embedding + layers 0-39, columns [0, 1/2)'."""
    parts = []
    if shard.first_unit == 0:
        parts.append("embedding")
    lo, hi = max(shard.first_unit, 1) - 1, min(shard.end_unit, num_layers + 1) - 1
    if lo < hi:
        parts.append(f"layers {lo}-{hi - 1}")
    if shard.end_unit == num_layers + 2:
        parts.append("LM head")
    return f"{' + '.join(parts)}, columns [{shard.col_lo}, {shard.col_hi})"
