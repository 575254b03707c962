"""One MoE layer's raw times on a cluster (before any overlap): compute per device, token all-to-alls from the
per-pair byte matrix, and the parameter / gradient communication of the system's expert and dense layout.

Notation: N devices, E experts, C slots per device, U_r distinct experts on device r, H hidden, F expert FFN,
P = 3*H*F elements per expert, S = ceil(P / N) shard width, T_d tokens device d sends (routes / k).
All collectives are `common.costmodel`'s (alpha-beta all-to-all over a byte matrix, ring all-gather / reduce-scatter
/ all-reduce); nothing here re-derives one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.costmodel import (
    ComputeModel,
    allgather_time,
    allreduce_time,
    alltoall_device_times,
    alltoall_time,
    reduce_scatter_time,
    swiglu_expert_flops,
)
from common.topology import ClusterSpec
from training.model import ModelConfig
from training.placement import Placement
from training.sim.systems import DenseComm, ExpertComm, System


@dataclass(frozen=True)
class Bytes:
    """Bytes per element on the wire."""

    activation: int = 2  # token hidden states (bf16)
    param: int = 2  # restored / gathered weights (bf16 compute; the fp32 master shard is cast on the sender)
    grad: int = 2  # weight gradients (bf16, as the compute)


@dataclass(frozen=True)
class NonExpert:
    """Work of a layer outside the expert GEMMs that `compute`'s GEMM efficiency does not describe. The defaults add
    nothing: attention's score kernels run at the compute model's efficiency and memory-bound kernels are free."""

    # Fraction of the device's peak flash attention's QK^T / AV kernels reach (None: the compute model's own).
    attention_efficiency: float | None = None
    # HBM bytes per token per layer that memory-bound kernels (norms, rotary, SwiGLU activation, router softmax /
    # top-k, token permutation, residual adds) read and write in one forward, at the device's memory bandwidth.
    elementwise_bytes: float = 0.0

    def __post_init__(self):
        if self.attention_efficiency is not None and not 0 < self.attention_efficiency <= 1:
            raise ValueError(f"attention_efficiency must be in (0, 1] or None, got {self.attention_efficiency}")
        if self.elementwise_bytes < 0:
            raise ValueError(f"elementwise_bytes must be >= 0, got {self.elementwise_bytes}")


@dataclass(frozen=True)
class LayerCosts:
    """Raw seconds of one layer's pieces for one micro-batch, each a max over devices (the slowest gates)."""

    attention_fwd: float  # attention + router + norms (+ memory-bound kernels, NonExpert) forward of the busiest source
    expert_fwd: float  # expert forward of the busiest device
    dispatch: float  # one token dispatch all-to-all
    combine: float  # one token combine all-to-all
    param_fwd: float  # weights needed before the forward's compute (restore / all-gather); 0 when resident
    param_bwd: float  # weights needed again before the backward (free mode)
    grad: float  # gradient communication (gradient all-to-all / reduce-scatter / all-reduce)
    max_tokens: int  # routes the busiest device computes
    expert_fwd_devices: np.ndarray  # [N] expert forward seconds of every device
    dispatch_devices: np.ndarray  # [N] seconds every device spends in one dispatch (its own send / receive)
    combine_devices: np.ndarray  # [N] likewise for one combine


def dense_flops_per_token(model: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs of one token through a layer's attention (projections and causal scores) and router; norms
    are negligible and left out."""
    return _gemm_flops_per_token(model) + _score_flops_per_token(model, seq_len)


def _gemm_flops_per_token(model: ModelConfig) -> float:
    q = model.num_heads * model.head_dim
    kv = model.num_kv_heads * model.head_dim
    proj = 2.0 * model.hidden * (2 * q + 2 * kv)  # Q, K, V, O
    router = 2.0 * model.hidden * model.num_experts
    return proj + router


def _score_flops_per_token(model: ModelConfig, seq_len: int) -> float:
    return 2.0 * seq_len * model.num_heads * model.head_dim  # QK^T and AV: 2 * 2 * S * q, halved by the causal mask


def attention_time(model: ModelConfig, cluster: ClusterSpec, compute: ComputeModel, tokens: float, seq_len: int,
                   non_expert: NonExpert | None = None) -> float:
    """Forward seconds of one device's attention, router and memory-bound kernels on `tokens` tokens."""
    extra = non_expert or NonExpert()
    if extra.attention_efficiency is None:
        t = compute.time(tokens * dense_flops_per_token(model, seq_len))
    else:
        scores = tokens * _score_flops_per_token(model, seq_len)
        t = (compute.time(tokens * _gemm_flops_per_token(model))
             + scores / (cluster.device.peak_flops * extra.attention_efficiency))
    return t + tokens * extra.elementwise_bytes / cluster.device.memory_bandwidth


def dense_params(model: ModelConfig) -> int:
    """Parameters of one layer outside the experts: attention, router, two norms."""
    q = model.num_heads * model.head_dim
    kv = model.num_kv_heads * model.head_dim
    attn = 2 * model.hidden * q + 2 * model.hidden * kv + ((q + 2 * kv) if model.qkv_bias else 0)
    return attn + model.num_experts * model.hidden + 2 * model.hidden


def layer_costs(model: ModelConfig, cluster: ClusterSpec, system: System, compute: ComputeModel,
                source_tokens: np.ndarray, routing: np.ndarray, layout: Placement, seq_len: int,
                nbytes: Bytes | None = None, non_expert: NonExpert | None = None) -> LayerCosts:
    """Raw costs of one layer. source_tokens [N] tokens each device sends; routing [N, E, N] routes from source i for
    expert j computed on device d (the plan's routing rule applied to the loads)."""
    n = cluster.num_devices
    h, f = model.hidden, model.ffn
    nbytes = nbytes or Bytes()
    attention = max(attention_time(model, cluster, compute, t, seq_len, non_expert) for t in np.asarray(source_tokens))
    device_tokens = routing.sum((0, 1))  # [N]
    experts = np.array([compute.time(swiglu_expert_flops(t, h, f, backward=False)) for t in device_tokens])  # [N]
    traffic = routing.sum(1).astype(np.float64) * (h * nbytes.activation)  # [N, N] bytes from i to d
    dispatches, combines = alltoall_device_times(traffic, cluster), alltoall_device_times(traffic.T, cluster)

    p = 3 * h * f
    shard = -(-p // n)  # S
    if system.expert_comm is ExpertComm.FSEP:
        distinct = np.array([np.unique(row).size for row in layout.slots])  # [N] U_r
        restore = np.broadcast_to(distinct[None, :] * float(shard), (n, n))  # [N, N] s sends r U_r pieces
        e_fwd = e_bwd = alltoall_time(restore * nbytes.param, cluster)
        e_grad = alltoall_time(restore.T * nbytes.grad, cluster)
    elif system.expert_comm is ExpertComm.FSDP:
        c = layout.slots_per_device
        e_fwd = e_bwd = allgather_time(c * shard * nbytes.param, cluster)
        e_grad = reduce_scatter_time(c * shard * nbytes.grad, cluster)
    else:  # REPLICATED: every expert's replicas all-reduce its gradient; a device runs its slots' one after another
        holders = layout.holders() > 0  # [E, N]
        per_expert = [allreduce_time(p * nbytes.grad, cluster, np.flatnonzero(holders[j]))
                      for j in range(layout.num_experts)]
        e_fwd = e_bwd = 0.0
        e_grad = max(sum(per_expert[j] for j in np.unique(row)) for row in layout.slots)
    dp = dense_params(model)
    if system.dense_comm is DenseComm.FSDP:
        d_fwd = d_bwd = allgather_time(-(-dp // n) * nbytes.param, cluster)
        d_grad = reduce_scatter_time(-(-dp // n) * nbytes.grad, cluster)
    else:
        d_fwd = d_bwd = 0.0
        d_grad = allreduce_time(dp * nbytes.grad, cluster)
    return LayerCosts(attention, float(experts.max()), float(dispatches.max()), float(combines.max()), e_fwd + d_fwd,
                      e_bwd + d_bwd, e_grad + d_grad, int(device_tokens.max()), experts, dispatches, combines)
