"""The distributed MoE layers: FSEPMoE (Fully Sharded Expert Parallel storage, re-layoutable expert placement) and
EPMoE (plain expert parallel), over one shared set of phases (`DistributedMoE`).

Notation: N devices, E experts, C slots per device, H hidden, F expert FFN size, P = 3*F*H elements of one expert,
S = ceil(P/N) shard width, T tokens on this device, k routes per token (token-major: route r is token r // k),
R routes this device receives.

Phases of one step, as in Megatron's dispatcher (each a method of DistributedMoE; which ones communicate is said
there and in each method's docstring):
  restore           storage -> stacked (w1 [U,F,H], w3 [U,F,H], w2 [U,H,F]) of my U <= C distinct experts (a
                    duplicate slot computes with its first copy's row). FSEP: all_to_all_single of expert pieces,
                    [E, S] shard -> [U, P], scheduled across layers and freed after the compute
                    (`training.fsep.schedule`); EP: my experts are stored whole, no communication
  route             router / trace-replay gate (no communication)
  dispatch          per-slot counts from the routing rule on the device, count exchange (the layer's one host sync)
                    and token all_to_all_single with uneven splits
  compute           received rows grouped by slot, every slot's SwiGLU expert as one grouped op per matrix
                    (`experts.grouped_swiglu`; no communication)
  combine           token all_to_all_single back, weighted sum of each token's k results (communication only in the a2a)
  gradient scatter  restore's backward: restored-row gradients -> storage gradient. FSEP: gradient all-to-all + fp32
                    sum over replicas into the shard gradient (`restore.start_gradient_scatter`, deferred by the
                    schedule under comm_opt); EP: autograd's own, no communication
Each forward captures the layer's layout (`LayerLayout`): its recompute and backward use it whatever set_placement
does in between.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from training.fsep.comm import all_to_all_tokens
from training.fsep.experts import grouped_swiglu
from training.fsep.groups import FSEPGroups
from training.fsep.layout import LayerLayout
from training.fsep.permute import inverse_permutation, permute_rows
from training.fsep.restore import RestoreWeights, expert_views
from training.fsep.schedule import RestoredExperts, RestoreSchedule
from training.moe.gating import route_counts
from training.moe.reference import ReferenceMoE, Router
from training.placement import Placement
from training.routing import split_counts


@dataclass
class DispatchPlan:
    """What compute and combine need to undo dispatch (one forward's bookkeeping, not layer state)."""

    send_order: torch.Tensor  # [T*k] route ids in send order (by destination device, then slot)
    send_inv: torch.Tensor  # [T*k] inverse of send_order: position of each route in the send buffer
    send_splits: list[int]  # [N] routes sent to each device
    recv_splits: list[int]  # [N] routes received from each device
    block_sizes: list[int]  # [N*C] received rows per (source, slot) block, in wire order (source-major)
    block_order: list[int]  # [N*C] wire blocks in grouped order: by the slot that computes them, then wire order
    group_sizes: list[int]  # [U] rows per restored expert in the grouped order (a duplicate slot's rows join its row)
    group_ends: torch.Tensor  # [U] int32 cumulative group_sizes on the device (the grouped GEMM's offsets)


def _block_gather(src_start: torch.Tensor, length: torch.Tensor, total: int) -> torch.Tensor:
    """Index that lays blocks out back to back: output block b (length[b] rows, in the given order) reads the source
    rows src_start[b] .. src_start[b] + length[b] - 1. Device tensors in and out; `total` (= length.sum(), known on
    the host) lets repeat_interleave size its output without reading it back."""
    shift = src_start - (torch.cumsum(length, 0) - length)  # [blocks] source minus output position of each block
    return torch.arange(total, device=length.device) + torch.repeat_interleave(shift, length, output_size=total)


def _reorder_blocks(x: torch.Tensor, sizes: list[int], order: list[int]) -> torch.Tensor:
    """x's row blocks (`sizes`, back to back) laid out in `order`: one cat of views, a plain copy each way (as
    Megatron's sort_chunks_by_idxs), measured cheaper on a CPU than a row gather by an index."""
    chunks = x.split(sizes)
    picked = [chunks[i] for i in order if sizes[i]]
    return torch.cat(picked) if len(picked) > 1 else picked[0] if picked else x


def default_placement(num_devices: int, num_experts: int, slots_per_device: int) -> Placement:
    """Round-robin: slot i (device-major) holds expert i mod E, so every expert has a replica when N*C >= E."""
    return Placement(np.arange(num_devices * slots_per_device).reshape(num_devices, -1) % num_experts, num_experts)


class DistributedMoE(nn.Module, ABC):
    """The phases shared by the distributed MoE layers, over an [N, C] layout (expert per slot) and the routing rule.
    Same constructor shape as ReferenceMoE plus slots per device and the process groups; `forward(x, target_counts)`
    as ReferenceMoE's.

    A subclass owns the expert storage: it implements `start_restore` / `restore_weights` (restore, and through
    autograd the gradient scatter), `_load_flat` (take this device's part of the full experts) and
    `gather_expert_weights` (all-gather the full experts back). Dispatch, compute and combine are shared."""

    def __init__(self, hidden: int, ffn: int, num_experts: int, top_k: int, slots_per_device: int,
                 groups: FSEPGroups, device: torch.device | str | None = None, max_block_rows: int | None = None):
        super().__init__()
        n = groups.size
        if n * slots_per_device < num_experts:
            raise ValueError(f"N*C = {n}*{slots_per_device} = {n * slots_per_device} slots cannot hold all "
                             f"{num_experts} experts; raise slots_per_device to at least {-(-num_experts // n)}")
        self.hidden, self.ffn, self.num_experts, self.top_k = hidden, ffn, num_experts, top_k
        self.slots_per_device, self.groups = slots_per_device, groups
        if max_block_rows is not None and max_block_rows < 1:
            raise ValueError(f"max_block_rows must be a positive row count or None, got {max_block_rows}")
        # Rows per expert matmul at most (None: a whole block at once). A tile size: on a CPU a block's [rows, F]
        # intermediates stay in cache for the element-wise SwiGLU ops when rows are few; same result either way.
        self.max_block_rows = max_block_rows
        self.num_elements = 3 * ffn * hidden  # P
        self.router = Router(hidden, num_experts, top_k).to(device)
        # [E] routes this device sent to each expert in its latest forward: the planner's input, read by the trainer
        # after every micro-batch (overwritten each forward, so nothing accumulates for a caller to clear).
        self.expert_counts: np.ndarray | None = None

    # ---- storage (subclass) ----------------------------------------------------------------------------------
    @abstractmethod
    def _load_flat(self, flat: torch.Tensor) -> None:
        """Take this device's part of flat [E, P] experts (w1 | w3 | w2 per row) into the storage."""

    @abstractmethod
    def gather_expert_weights(self, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full (w1 [E,F,H], w3 [E,F,H], w2 [E,H,F]) on every rank, or their gradients (communicates: all-gather)."""

    @torch.no_grad()
    def load_reference(self, ref: ReferenceMoE):
        """Copy the reference layer's weights in (every device takes its own part). Returns self."""
        if (ref.hidden, ref.ffn, ref.num_experts, ref.top_k) != (self.hidden, self.ffn, self.num_experts, self.top_k):
            raise ValueError("reference layer shape differs from this layer's (hidden, ffn, num_experts, top_k)")
        dev = self.router.weight.device
        self.router.weight.copy_(ref.router.weight.to(dev))
        flat = torch.cat([ref.w1.detach().flatten(1), ref.w3.detach().flatten(1), ref.w2.detach().flatten(1)], 1)
        self._load_flat(flat.to(dev))  # [E, P]
        return self

    def _unflatten(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """flat [E, >= P] -> (w1 [E,F,H], w3 [E,F,H], w2 [E,H,F]) (views; columns beyond P are padding)."""
        e, f, h = self.num_experts, self.ffn, self.hidden
        return (flat[:, : f * h].reshape(e, f, h), flat[:, f * h: 2 * f * h].reshape(e, f, h),
                flat[:, 2 * f * h: 3 * f * h].reshape(e, h, f))

    # ---- layout ----------------------------------------------------------------------------------------------
    def _set_layout(self, placement: Placement, routing_fractions: np.ndarray | None) -> None:
        """Layout bookkeeping the phases read (placement already checked against this layer's shape): the layout
        of the next forward on. A forward captures it (`_forward_layout`), so its recompute and backward keep it.
        Slots of my device holding the same expert compute as one: rows of a duplicate slot run in one matmul with
        the first copy's restored weights (same result, larger matmul; the shard gradient sums over replicas)."""
        self._layout = LayerLayout.build(placement, routing_fractions, self.groups.rank, self.groups.devices_per_node,
                                         self.router.weight.device)
        self._active: LayerLayout | None = None  # the layout of the forward running now, if any

    @contextmanager
    def _forward_layout(self, layout: LayerLayout):
        """The phases of this forward read `layout` (placement, routing_fractions, ...) whatever set_placement does."""
        self._active = layout
        try:
            yield
        finally:
            self._active = None

    @property
    def layout(self) -> LayerLayout:
        """The layout the phases read: the running forward's, else the latest set_placement's."""
        return self._layout if self._active is None else self._active

    @property
    def placement(self) -> Placement:
        return self.layout.placement

    @property
    def routing_fractions(self) -> np.ndarray | None:
        return self.layout.routing_fractions

    def expert_parts(self) -> tuple[tuple[int, int], ...]:
        """Shapes of one expert's matrices in flat order: w1 [F, H], w3 [F, H], w2 [H, F]."""
        f, h = self.ffn, self.hidden
        return (f, h), (f, h), (h, f)

    # ---- phases ----------------------------------------------------------------------------------------------
    @abstractmethod
    def start_restore(self) -> RestoredExperts | None:
        """Begin this forward's restore (None: nothing to launch); what it returns captures the forward's layout
        (`.layout`) and goes to `restore_weights`."""

    @abstractmethod
    def restore_weights(self, pending: RestoredExperts | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Restore: (w1 [U, F, H], w3 [U, F, H], w2 [U, H, F]) stacked over the restored rows (row `layout.compute_slot[c]`
        computes slot c), what compute consumes. Its backward is the gradient scatter into the storage's gradient.
        Whether either communicates is the storage's (see the subclass)."""

    def end_compute(self, pending: RestoredExperts | None, out: torch.Tensor) -> None:
        """After the expert compute of a forward (out: its output): the storage's lifecycle step (FSEP frees the
        restored experts here). No communication."""

    def dispatch(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, DispatchPlan]:
        """x [T, H], idx [T, k] -> received tokens [R, H] in (source, slot) blocks (communicates: counts, tokens).

        1. Count routes per expert and split them over slots with the routing rule (`routing.split_counts`), on the
           device.
        2. Routes sorted by expert take the slot sequence of that expert's replicas in order: a run of per_slot[s]
           routes per slot s. Sending by slot reorders whole runs, so the send order is the expert sort shifted by
           one offset per run (no second sort).
        3. Exchange per-slot counts, then bring the expert counts and the sent and received per-slot counts to the
           host in one transfer: the layer's only host sync (the token all-to-all needs its split sizes there).
        4. The tokens (uneven all_to_all_single).
        """
        n, c, e = self.groups.size, self.slots_per_device, self.num_experts
        m = n * c
        experts = idx.reshape(-1)  # [T*k]
        routes = experts.numel()
        layout = self.layout  # this forward's (captured), read once
        counts = route_counts(idx, e)  # Step 1, [E]
        per_slot = split_counts(counts.unsqueeze(0), layout.shares)[0]  # [N*C]
        recv_counts = torch.empty_like(per_slot)  # Step 3, [N*C]: C per source, wire order
        dist.all_to_all_single(recv_counts, per_slot, group=self.groups.ep)
        host = torch.cat([counts, per_slot, recv_counts]).tolist()
        self.expert_counts = np.array(host[:e], dtype=np.int64)
        sent = np.array(host[e:e + m], dtype=np.int64).reshape(n, c)
        got = np.array(host[e + m:], dtype=np.int64)
        if sent.sum() != routes:
            j = int(np.flatnonzero(layout.unplaced & (self.expert_counts > 0))[0])
            raise ValueError(f"expert {j} receives tokens from device {self.groups.rank} but has no replica")
        send_splits, recv_splits = sent.sum(1).tolist(), got.reshape(n, c).sum(1).tolist()
        by_expert = torch.argsort(experts, stable=True)  # Step 2 (its sizes are checked by now)
        run_len = per_slot.index_select(0, layout.slots_by_expert)
        run_start = torch.empty_like(per_slot).index_copy_(0, layout.slots_by_expert, torch.cumsum(run_len, 0) - run_len)
        send_order = by_expert.index_select(0, _block_gather(run_start, per_slot, routes))
        send_inv = inverse_permutation(send_order)
        recv = all_to_all_tokens(permute_rows(x, send_order, send_inv, self.top_k), recv_splits, send_splits,
                                 self.groups.ep)  # Step 4
        u = layout.num_rows  # restored rows: the groups the received blocks are computed in
        group_rows = torch.zeros(u, dtype=torch.int64, device=x.device).index_add_(0, layout.block_group, recv_counts)
        sizes = np.bincount(layout.block_group_host, weights=got, minlength=u).astype(np.int64).tolist()
        plan = DispatchPlan(send_order, send_inv, send_splits, recv_splits, got.tolist(), layout.block_order, sizes,
                            torch.cumsum(group_rows, 0).to(torch.int32))
        return recv, plan

    def compute(self, tokens: torch.Tensor, weights: tuple[torch.Tensor, ...], plan: DispatchPlan) -> torch.Tensor:
        """Received rows [R, H] (wire order) through their slots' experts, [R, H] back in wire order (no
        communication). weights: (w1 [U, F, H], w3 [U, F, H], w2 [U, H, F]) from `restore_weights` (or
        `restore.expert_views` of a [U, P] tensor), one row per distinct expert of my slots. Rows are regrouped by
        restored row so each matrix is one grouped op over all of them (`experts.grouped_swiglu`); duplicates of an
        expert on this device compute as one group (the shard gradient sums replicas anyway)."""
        order = plan.block_order
        rows = _reorder_blocks(tokens, plan.block_sizes, order)
        out = grouped_swiglu(rows, *weights, plan.group_sizes, plan.group_ends, self.max_block_rows)
        back = np.argsort(order).tolist()  # grouped position of each wire block
        return _reorder_blocks(out, [plan.block_sizes[i] for i in order], back)

    def combine(self, out: torch.Tensor, plan: DispatchPlan, weights: torch.Tensor) -> torch.Tensor:
        """Send results back and weight each token's k results by its [T, k] combine weights (communicates: one
        uneven all_to_all_single)."""
        back = all_to_all_tokens(out, plan.send_splits, plan.recv_splits, self.groups.ep)  # in send order
        routed = permute_rows(back, plan.send_inv, plan.send_order).view(-1, self.top_k, self.hidden)  # [T, k, H]
        return (routed * weights.unsqueeze(-1)).sum(1)

    def forward(self, x: torch.Tensor, target_counts: torch.Tensor | None = None):
        """x [..., H] -> (y [..., H], aux_loss). target_counts [E]: replay these per-expert counts exactly."""
        shape = x.shape
        x = x.reshape(-1, self.hidden)
        pending = self.start_restore()  # in flight during routing and dispatch
        with self._forward_layout(self._layout if pending is None else pending.layout):
            idx, w, aux = self.router(x, target_counts)
            tokens, plan = self.dispatch(x, idx)
            out = self.compute(tokens, self.restore_weights(pending), plan)
            self.end_compute(pending, out)
            y = self.combine(out, plan, w)
        return y.reshape(shape), aux


class FSEPMoE(DistributedMoE):
    """Fully Sharded Expert Parallel: persistent expert state per device is `expert_shard` [E, S] (piece d of every
    expert on device d), whatever the placement. `set_placement` changes only which experts the next restore builds
    and where tokens go. Restore and gradient scatter communicate (one all_to_all_single each, on the restore group).

    comm_opt: the fine-grained communication schedule (restore prefetch across layers, deferred gradient all-to-all,
    separate restore group; `training.fsep.schedule`); False runs each synchronously where it is used.
    keep_restored: keep restored experts from forward to backward instead of freeing them after the forward and
    restoring them again for the backward (less communication, U*P more memory per layer; for small models).
    compute_dtype: dtype of the restored experts, the restore's wire and the expert compute (bf16 for mixed
    precision); None: the shard's. The shard (master weights) and its gradient keep their own dtype (fp32).

    A layer built alone has its own schedule; `apply_fsep` gives all FSEP layers of a model one (`schedule`), so the
    prefetch reaches across layers."""

    def __init__(self, hidden: int, ffn: int, num_experts: int, top_k: int, slots_per_device: int,
                 groups: FSEPGroups, placement: Placement | None = None, comm_opt: bool = True,
                 keep_restored: bool = False, compute_dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, max_block_rows: int | None = None):
        super().__init__(hidden, ffn, num_experts, top_k, slots_per_device, groups, device, max_block_rows)
        self.keep_restored, self.compute_dtype = keep_restored, compute_dtype
        self.shard_width = -(-self.num_elements // groups.size)  # S
        self.expert_shard = nn.Parameter(torch.zeros(num_experts, self.shard_width, device=device))
        self.set_placement(placement or default_placement(groups.size, num_experts, slots_per_device))
        self.schedule = RestoreSchedule([self], comm_opt)

    # ---- storage ---------------------------------------------------------------------------------------------
    def _load_flat(self, flat):
        r, s = self.groups.rank, self.shard_width
        padded = nn.functional.pad(flat, (0, self.groups.size * s - self.num_elements))  # [E, N*S], zero padded
        self.expert_shard.copy_(padded[:, r * s:(r + 1) * s])

    @torch.no_grad()
    def gather_expert_weights(self, grad: bool = False):
        if grad:
            self.schedule.finish_gradients()
        src = self.expert_shard.grad if grad else self.expert_shard
        parts = [torch.empty_like(src) for _ in range(self.groups.size)]
        dist.all_gather(parts, src.contiguous(), group=self.groups.ep)
        return self._unflatten(torch.cat(parts, 1))

    # ---- layout ----------------------------------------------------------------------------------------------
    def set_placement(self, placement: Placement, routing_fractions: np.ndarray | None = None) -> None:
        """Use `placement` ([N, C] expert per slot) from the next forward on (a forward already run keeps its own
        layout for its recompute and backward). routing_fractions [N, E, N] (optional, a planner's routing):
        proportions over devices of the tokens from source i for expert j; without it the FSEP rule applies. Moves
        no parameter, gradient or optimizer value."""
        n, c, e = self.groups.size, self.slots_per_device, self.num_experts
        if not isinstance(placement, Placement):
            raise TypeError(f"set_placement takes a Placement, got {type(placement).__name__}")
        if placement.slots.shape != (n, c) or placement.num_experts != e:
            raise ValueError(f"placement is {placement.slots.shape} over {placement.num_experts} experts; this layer "
                             f"needs [N={n}, C={c}] over E={e}")
        if routing_fractions is not None:
            routing_fractions = np.asarray(routing_fractions, dtype=np.float64)
            rf = routing_fractions
            if rf.shape != (n, e, n) or np.any(rf < 0) or not np.all(np.isfinite(rf)):
                raise ValueError(f"routing_fractions must be finite, non-negative [N, E, N] = [{n}, {e}, {n}], "
                                 f"got shape {rf.shape}")
            stray = (rf > 0) & (placement.holders()[None] == 0)
            if stray.any():
                i, j, d = np.argwhere(stray)[0]
                raise ValueError(f"routing_fractions send tokens of expert {j} from device {i} to device {d}, "
                                 f"which holds no replica of it")
        self._set_layout(placement, routing_fractions)

    # ---- phases ----------------------------------------------------------------------------------------------
    def start_restore(self) -> RestoredExperts:
        """This forward's restore, launched now under comm_opt (communicates) unless a prefetch already carries it;
        a recompute gets its forward's (layout and buffer)."""
        return self.schedule.begin_forward(self)

    def restore_weights(self, pending: RestoredExperts | None = None):
        """(w1 [U, F, H], w3 [U, F, H], w2 [U, H, F]) of my distinct restored experts, views of the restored buffer
        (communicates: the restore all-to-all unless already done, and in backward the gradient scatter). Launches
        the next layer's restore first (comm_opt)."""
        if pending is None:
            pending = self.start_restore()
        self.schedule.before_compute(pending)
        grad_input = self.schedule.anchor if pending.defer_gradient else self.expert_shard  # schedule's doc
        return RestoreWeights.apply(grad_input, pending, self.expert_parts())

    def end_compute(self, pending: RestoredExperts, out: torch.Tensor) -> None:
        """Free the restored experts unless keep_restored (restored again when the gradient reaches `out`)."""
        self.schedule.end_compute(pending, out)


class EPMoE(DistributedMoE):
    """Expert parallel without padding (Megatron-style dropless): device d permanently holds experts
    d*E/N .. (d+1)*E/N - 1 whole in `local_experts` [E/N, P], so restore and gradient scatter need no communication;
    the layout is fixed (no set_placement)."""

    def __init__(self, hidden, ffn, num_experts, top_k, groups: FSEPGroups, device=None, max_block_rows=None):
        n = groups.size
        if num_experts % n:
            raise ValueError(f"EP needs num_experts divisible by N, got E={num_experts}, N={n}")
        super().__init__(hidden, ffn, num_experts, top_k, num_experts // n, groups, device, max_block_rows)
        self.local_experts = nn.Parameter(torch.zeros(num_experts // n, self.num_elements, device=device))  # [C, P]
        self._set_layout(Placement(np.arange(num_experts).reshape(n, -1), num_experts), None)

    def _load_flat(self, flat):
        c, r = self.slots_per_device, self.groups.rank
        self.local_experts.copy_(flat[r * c:(r + 1) * c])

    @torch.no_grad()
    def gather_expert_weights(self, grad: bool = False):
        src = self.local_experts.grad if grad else self.local_experts
        parts = [torch.empty_like(src) for _ in range(self.groups.size)]
        dist.all_gather(parts, src.contiguous(), group=self.groups.ep)
        return self._unflatten(torch.cat(parts))

    def start_restore(self) -> None:
        """Nothing to launch: my experts are stored whole."""
        return None

    def restore_weights(self, pending=None):
        """Views of my whole experts (no communication, nor in backward)."""
        return expert_views(self.local_experts, self.expert_parts())
