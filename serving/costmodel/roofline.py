"""Analytic roofline cost model for any model and replica config on a common.topology cluster.

Notation: P parameters per layer, Lyr layers, H hidden, tp / pp the replica's degrees, F peak FLOP/s and W memory
bandwidth of one device, ce / me the fractions of them achieved. Per iteration, one micro-batch's pass through all pp
stages (the replica keeps up to pp micro-batches in flight: IterationCost.pipeline_stages):
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
    # Per device, kept free beside the profiled activations (CUDA graphs, allocator slack, NCCL buffers).
    activation_reserve_bytes: float = 1 * 2**30
    max_num_seqs: int = 256  # vLLM's default cap on sequences in one batch
    max_num_batched_tokens: int = 8192  # tokens in one forward pass: vLLM profiles the activations at this size


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


def activation_bytes(model: ModelSpec, config: ReplicaConfig, params: RooflineParams) -> float:
    """Peak activation memory of one device in a forward pass of max_num_batched_tokens tokens, as vLLM's profiling
    run finds it: the residual stream and attention output (2 H), the MLP's intermediate outputs split by TP (gate
    and up for SwiGLU), and fp32 logits of the sampled sequences (vocab split by TP)."""
    t = params.max_num_batched_tokens
    mlp = (2 if model.gated_mlp else 1) * model.ffn / config.tp
    hidden = t * (2 * model.hidden + mlp) * model.bytes_per_param
    logits = params.max_num_seqs * model.vocab / config.tp * 4
    return hidden + logits


def kv_capacity_tokens(model: ModelSpec, cluster: ClusterSpec, config: ReplicaConfig, params: RooflineParams) -> int:
    """KV-cache tokens the replica holds after its weights, activations and fixed reserve (may be <= 0: does not
    fit). Weights split evenly over the tp * pp devices (TP splits the matrices, PP the layers)."""
    per_dev = (cluster.device.memory_bytes * params.gpu_memory_util - params.activation_reserve_bytes
               - activation_bytes(model, config, params))
    return int((config.gpus * per_dev - model.weight_bytes) // model.kv_bytes_per_token)


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
    attn_prefill, per_ctx = context_terms(model, cluster, config, params)

    b = np.arange(params.max_num_seqs + 1, dtype=float)
    a = [params.overhead_s + weights_s + flops_per_token * x / compute + communication_s(model, cluster, config, x)
         for x in b]
    return IterationCost(
        config=config,
        prefill_knots_tokens=tuple(float(x) for x in knots),
        prefill_knots_s=tuple(float(x) for x in f),
        prefill_s_per_sq_token=attn_prefill,
        decode_base_s=decode_base_table(b, np.asarray(a), params.max_num_seqs),
        decode_s_per_ctx_token=per_ctx,
        kv_capacity_tokens=kv_capacity_tokens(model, cluster, config, params),
        source="roofline",
        pipeline_stages=config.pp,
    )


def context_terms(model: ModelSpec, cluster: ClusterSpec, config: ReplicaConfig, params: RooflineParams):
    """(q, b): prefill attention seconds per unit of sum L^2 and decode seconds per cached context token, from the
    roofline (the measured table borrows them where it has no context dependence)."""
    dev = cluster.device
    compute = config.tp * dev.peak_flops * params.compute_eff
    stream = config.tp * dev.memory_bandwidth * params.memory_eff
    q = 2 * model.hidden * model.num_layers / compute
    b = model.kv_bytes_per_token / stream + 4 * model.hidden * model.num_layers / compute
    return q, b
