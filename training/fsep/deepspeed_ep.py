"""Baseline: expert parallel through `deepspeed.moe.layer.MoE`, weights copied from a ReferenceMoE.

Notation: T tokens on this device, E experts, k routes per token, H hidden, F expert FFN size.
DeepSpeed pads every expert's buffer to one capacity: dropless mode (drop_tokens=False) uses the largest expert count
over the EP group, capacity mode uses ceil(k*T/E * capacity_factor) and drops the routes beyond it.
DeepSpeed 0.19.8 dispatches by index (its sparse-route path: `_sparse_encode` / `_sparse_decode`), not with the dense
[T, E, capacity] one-hot einsum of older releases, so its capacity-mode dispatch costs O(T*k*H), not O(T^2*k*H).
deepspeed is imported only when this baseline is built, so `import training` does not need it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from training.fsep.groups import FSEPGroups
from training.moe.gating import replay_assignment, switch_aux_loss
from training.moe.reference import ReferenceMoE, swiglu


def capacity(num_tokens: int, num_experts: int, k: int, capacity_factor: float) -> int:
    """DeepSpeed's per-expert capacity with token dropping: ceil(T/E * capacity_factor * k)."""
    return math.ceil(num_tokens / num_experts * capacity_factor * k)


def dropped_routes(counts: np.ndarray, cap: int) -> int:
    """Routes beyond `cap` on an expert are dropped: sum_j max(0, counts_j - cap)."""
    return int(np.maximum(np.asarray(counts) - cap, 0).sum())


class _SwiGLUExpert(nn.Module):
    """One expert in DeepSpeed's expert container (it deep-copies this module per local expert)."""

    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.zeros(ffn, hidden))
        self.w3 = nn.Parameter(torch.zeros(ffn, hidden))
        self.w2 = nn.Parameter(torch.zeros(hidden, ffn))

    def forward(self, x):
        return swiglu(x, self.w1, self.w3, self.w2)


class _ReplayGate(nn.Module):
    """Trace-replay gate in DeepSpeed's sparse gate format, sharing the TopKGate's router weight `wg`.
    Same assignment and weights as training.moe's Router with target counts; locations and capacity as DeepSpeed's
    top-k gates compute them (choice-major: all first choices queue before second choices)."""

    def __init__(self, wg: nn.Linear, k: int, capacity_factor: float, drop_tokens: bool):
        super().__init__()
        self.wg, self.k, self.capacity_factor, self.drop_tokens = wg, k, capacity_factor, drop_tokens
        self.ep_group = None
        self.target_counts = None  # set by DeepSpeedEP.forward just before DeepSpeed calls the gate

    def _set_ep_group(self, group):
        self.ep_group = group

    def forward(self, x, used_token=None, sparse_routes=True, use_tutel=False):
        if not sparse_routes or use_tutel:
            raise NotImplementedError("the replay gate only serves DeepSpeed's sparse-route dispatch")
        t, k = x.shape[0], self.k
        probs = F.softmax(F.linear(x.float(), self.wg.weight.float()), dim=-1)  # [T, E]
        e = probs.shape[1]
        idx = replay_assignment(self.target_counts, t, k).to(x.device)  # [T, k]
        ind = idx.t()  # [k, T]
        onehot = F.one_hot(ind.reshape(-1), e)  # [k*T, E] choice-major
        loc = ((onehot.cumsum(0) - 1) * onehot).sum(1).view(k, t)
        exp_counts = onehot.sum(0)
        if self.drop_tokens:
            cap = capacity(t, e, k, self.capacity_factor)
            keep = loc < cap
        else:
            cap_t = exp_counts.max().clone()
            if self.ep_group is not None:
                dist.all_reduce(cap_t, op=dist.ReduceOp.MAX, group=self.ep_group)
            cap, keep = int(cap_t), torch.ones_like(loc, dtype=torch.bool)
        gates = probs.gather(1, idx).t() * keep  # [k, T]
        if k > 1:
            gates = gates / gates.sum(0, keepdim=True).clamp_min(torch.finfo(gates.dtype).eps)
        ind = torch.where(keep, ind, torch.full_like(ind, -1))
        return switch_aux_loss(probs, idx), cap, e, ind.int(), loc.int(), gates, exp_counts


class DeepSpeedEP(nn.Module):
    """`forward(x, target_counts=None) -> (y, aux)` over deepspeed.moe.layer.MoE with ep_size = N.

    Without target_counts DeepSpeed's own TopKGate routes (no noise, no random token selection); with them the
    replay gate does. The EP group is DeepSpeed's own (it builds groups over the default world), so `groups.ep`
    must span the whole world."""

    def __init__(self, ref: ReferenceMoE, groups: FSEPGroups, drop_tokens: bool, capacity_factor: float = 1.0):
        super().__init__()
        import deepspeed
        from deepspeed.moe.layer import MoE

        n = groups.size
        if n != dist.get_world_size():
            raise ValueError("DeepSpeedEP needs the EP group to be the whole world (DeepSpeed builds its own groups)")
        if ref.num_experts % n or ref.top_k > 2:
            raise ValueError("DeepSpeedEP needs E divisible by N and top_k in {1, 2}")
        deepspeed.init_distributed(dist_backend=dist.get_backend(), verbose=False)
        self.moe = MoE(hidden_size=ref.hidden, expert=_SwiGLUExpert(ref.hidden, ref.ffn), num_experts=ref.num_experts,
                       ep_size=n, k=ref.top_k, capacity_factor=capacity_factor, eval_capacity_factor=capacity_factor,
                       min_capacity=0, drop_tokens=drop_tokens, use_rts=False, top2_2nd_expert_sampling=False)
        self.moe.set_deepspeed_parallelism()
        gate = self.moe.deepspeed_moe.gate
        self._topk_gate = gate
        self._replay_gate = _ReplayGate(gate.wg, ref.top_k, capacity_factor, drop_tokens)
        self._replay_gate._set_ep_group(gate.ep_group)
        with torch.no_grad():
            gate.wg.weight.copy_(ref.router.weight)
            local = ref.num_experts // n
            for i, ex in enumerate(self.moe.deepspeed_moe.experts.deepspeed_experts):
                j = groups.rank * local + i
                ex.w1.copy_(ref.w1[j])
                ex.w3.copy_(ref.w3[j])
                ex.w2.copy_(ref.w2[j])

    def local_expert_ids(self) -> list[int]:
        local = len(self.moe.deepspeed_moe.experts.deepspeed_experts)
        return [dist.get_rank() * local + i for i in range(local)]

    def forward(self, x: torch.Tensor, target_counts: torch.Tensor | None = None):
        layer = self.moe.deepspeed_moe
        if target_counts is None:
            layer.gate = self._topk_gate
            y, aux, _ = self.moe(x)
        else:
            self._replay_gate.target_counts = target_counts
            layer.gate = self._replay_gate
            try:
                y, aux, _ = self.moe(x)
            finally:
                layer.gate, self._replay_gate.target_counts = self._topk_gate, None
        return y, aux
