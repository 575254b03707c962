"""Analytic roofline cost model for any model and replica config on a common.topology cluster.

Notation: P parameters per layer, Lyr layers, H hidden, tp / pp the replica's degrees, F peak FLOP/s and W memory
bandwidth of one device, ce / me the fractions of them achieved. Per iteration (all pp stages run one after another):
  prefill(T) = 2 P Lyr T / (tp F ce)  +  weights / (tp W me)  +  2 Lyr all-reduces of T H bytes  +  (pp-1) sends  + o
  decode(B, C) = 2 P Lyr B / (tp F ce) +  (weights + C * kv_bytes) / (tp W me)  +  the same communication       + o
plus the causal attention FLOPs (2 H Lyr sum L^2 in prefill, 4 H Lyr C in decode).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.costmodel import allreduce_time, p2p_time
from common.topology import ClusterSpec
from serving.costmodel.iteration import IterationCost, ReplicaConfig, decode_base_table
from serving.costmodel.models import ModelSpec


@dataclass(frozen=True)
class RooflineParams:
    """Achieved fractions of peak: calibrate.fit_roofline on the measured llama2-70b A100 points (all TPs) gives
    ce 0.56, me 1.0 (its bound) and o 23 ms: the measured decode steps sit ~20 ms above streaming the weights at any
    bandwidth, a fixed cost the overhead term absorbs. The other hardware and bloom-176b are out of sample."""

    compute_eff: float = 0.56  # ce: fraction of peak FLOP/s reached by prefill / decode GEMMs
    memory_eff: float = 1.0  # me: fraction of peak memory bandwidth reached streaming weights and KV
    overhead_s: float = 0.023  # o: per-iteration fixed cost (scheduling, launches, synchronisation)
    gpu_memory_util: float = 0.9  # share of device memory vLLM may use (its gpu_memory_utilization)
    activation_reserve_bytes: float = 2 * 2**30  # per device, kept free for activations
    max_num_seqs: int = 256  # vLLM's default cap on sequences in one batch


DEFAULT_PARAMS = RooflineParams()


def replica_devices(cluster: ClusterSpec, config: ReplicaConfig) -> list[int]:
    """Devices of a replica placed at the start of a node: TP inside a node, PP stages on consecutive groups."""
    if config.tp < 1 or config.pp < 1:
        raise ValueError(f"replica {config}: tp and pp must be >= 1")
    if config.tp > cluster.devices_per_node:
        raise ValueError(f"replica {config}: tp {config.tp} exceeds {cluster.devices_per_node} devices per node")
    if config.gpus > cluster.num_devices:
        raise ValueError(f"replica {config} needs {config.gpus} GPUs; cluster {cluster.name} has {cluster.num_devices}")
    return list(range(config.gpus))


def kv_capacity_tokens(model: ModelSpec, cluster: ClusterSpec, config: ReplicaConfig, params: RooflineParams) -> int:
    """KV-cache tokens the replica holds after its weights and activation reserve (may be <= 0: does not fit)."""
    usable = config.gpus * (cluster.device.memory_bytes * params.gpu_memory_util - params.activation_reserve_bytes)
    return int((usable - model.weight_bytes) // model.kv_bytes_per_token)


def communication_s(model: ModelSpec, cluster: ClusterSpec, config: ReplicaConfig, tokens: float) -> float:
    """TP all-reduces (two per layer) and PP activation sends for `tokens` tokens in one iteration."""
    devs = replica_devices(cluster, config)
    act = tokens * model.hidden * model.bytes_per_param
    t = 0.0
    if config.tp > 1:
        t += 2 * model.num_layers * allreduce_time(act, cluster, devs[: config.tp])
    for s in range(1, config.pp):  # stage s-1 -> s: last device of one group to the first of the next
        t += p2p_time(act, cluster, devs[s * config.tp - 1], devs[s * config.tp])
    return t


def roofline_cost(
    model: ModelSpec, cluster: ClusterSpec, config: ReplicaConfig, params: RooflineParams = DEFAULT_PARAMS
) -> IterationCost:
    dev = cluster.device
    compute = config.tp * dev.peak_flops * params.compute_eff  # FLOP/s of one stage; stages run in turn
    stream = config.tp * dev.memory_bandwidth * params.memory_eff
    flops_per_token = 2 * model.params_per_layer * model.num_layers
    weights_s = model.weight_bytes / stream

    # Prefill f(T) on a log grid of T; communication is not linear in T (latency terms), so tabulate it.
    knots = np.unique(np.concatenate([[1.0], 2.0 ** np.arange(4, 18)]))
    f = [params.overhead_s + weights_s + flops_per_token * t / compute + communication_s(model, cluster, config, t)
         for t in knots]
    attn_prefill = 2 * model.hidden * model.num_layers / compute

    b = np.arange(params.max_num_seqs + 1, dtype=float)
    a = [params.overhead_s + weights_s + flops_per_token * x / compute + communication_s(model, cluster, config, x)
         for x in b]
    per_ctx = model.kv_bytes_per_token / stream + 4 * model.hidden * model.num_layers / compute
    return IterationCost(
        config=config,
        prefill_knots_tokens=tuple(float(x) for x in knots),
        prefill_knots_s=tuple(float(x) for x in f),
        prefill_s_per_sq_token=attn_prefill,
        decode_base_s=decode_base_table(b, np.asarray(a), params.max_num_seqs),
        decode_s_per_ctx_token=per_ctx,
        kv_capacity_tokens=kv_capacity_tokens(model, cluster, config, params),
        source="roofline",
    )
