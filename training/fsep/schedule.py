"""The FSEP expert-memory lifecycle and communication schedule of a model's FSEP layers (FSDP-style), as a
coordinator that knows the layers in forward order.

Notation: L FSEP layers in forward order, layer i; U distinct experts restored per device, P elements per expert.

Memory lifecycle (one `RestoredExperts` per forward of a layer):
  1. Forward: restore the layer's experts into a [U, N*S] buffer, run the expert compute, then free the buffer's
     storage (free mode). Autograd still holds its views; their storage is empty until step 2.
  2. Backward: when the gradient reaches the compute's output (a tensor hook), or when activation checkpointing
     recomputes the layer, restore again into the same storage (the saved views see the values again), then the
     compute's backward runs and the gradient scatter frees it for good.
  keep_restored: skip the free of step 1 (the restored experts stay alive from forward to backward, no second
  restore): less communication, L*U*P more resident memory.
  Persistent memory stays the [E, S] shard; restored memory is at most the current layer and one prefetched layer.

Communication schedule (comm_opt; off: every restore and gradient all-to-all runs synchronously where it is used,
all on the token group, the paper's `no_comm_opt` ablation):
  - forward: the restore of layer i+1 is launched before layer i's expert compute (layer 0's at the top of its own
    forward), so it overlaps layer i's compute and combine and layer i+1's attention, router and dispatch;
  - backward: when layer i's backward starts, the restore of layer i-1 is launched;
  - backward: the gradient all-to-all of layer i is launched, not waited: it finishes when layer i-1's is launched
    (one in flight) and at the end of the backward pass (an autograd engine callback), so it overlaps layer i-1's
    backward; the restore op's autograd input is then a placeholder, not the shard, and the finished gradient is
    accumulated by a backward rooted at the shard (so the shard's gradient hooks run once, as usual);
  - restore and gradient traffic go on `FSEPGroups.restore_group`, apart from the token all-to-alls.

Layout capture: each forward's `RestoredExperts` holds the layer's `LayerLayout` of that forward. A forward run
inside a backward pass is a recompute (activation checkpointing): it takes the layout, and restored buffer, of the
latest forward of the layer whose backward has not run (backward runs forwards in reverse order).
"""

from __future__ import annotations

import torch

from training.fsep.layout import LayerLayout
from training.fsep.restore import PendingGradient, PendingRestore, assemble, start_gradient_scatter, start_restore

# Forwards of one layer whose backward has not run, at most: an eval or no-grad forward never runs one, and its
# (small: layout, empty buffer) record is dropped from the front once this many newer ones exist.
MAX_PENDING_FORWARDS = 16


def in_backward() -> bool:
    """Whether the caller runs inside an autograd backward pass (a recompute, under activation checkpointing).
    torch has no public query; the graph task id is -1 outside backward."""
    return torch._C._current_graph_task_id() != -1


class RestoredExperts:
    """One forward's restore of one layer: its layout, the in-flight all-to-all and the [U, N*S] restored buffer
    (empty storage while freed)."""

    def __init__(self, layer, schedule: RestoreSchedule, layout: LayerLayout):
        self.layer, self.schedule, self.layout = layer, schedule, layout
        self.num_devices = len(layout.restored_counts)
        self.shard_width = layer.shard_width
        self.rows = layout.restored_counts[layer.groups.rank]  # U
        self.dtype = layer.compute_dtype or layer.expert_shard.dtype
        self.pending: PendingRestore | None = None
        self.full: torch.Tensor | None = None  # [U, N*S]; storage resized to 0 while freed
        self.filled = False  # full holds the restored values now
        self.recompute = False  # a recompute (activation checkpointing) took this forward's layout
        self.defer_gradient = schedule.comm_opt  # its gradient all-to-all is deferred (decided at its forward)
        self.backward_started = False
        self.released = False

    @property
    def nbytes(self) -> int:
        return self.rows * self.num_devices * self.shard_width * torch.empty((), dtype=self.dtype).element_size()

    def start(self) -> None:
        """Launch the restore all-to-all unless it is in flight or the buffer is filled (communicates)."""
        if self.pending is None and not self.filled:
            layer = self.layer
            self.pending = start_restore(layer.expert_shard, self.layout, layer.groups.rank,
                                         self.schedule.restore_group(layer), self.dtype)
            self.schedule.account(self.nbytes)

    def buffer(self) -> torch.Tensor:
        """The filled [U, N*S] buffer: waits for the restore (launching it first when nothing is in flight)."""
        if self.filled:
            return self.full
        self.start()
        if self.full is None:
            self.full = torch.empty(self.rows, self.num_devices * self.shard_width, dtype=self.dtype,
                                    device=self.layer.expert_shard.device)
        else:
            self.full.untyped_storage().resize_(self.nbytes)
        assemble(self.pending, self.full)
        self.pending, self.filled = None, True  # the receive buffer's bytes move to the filled buffer
        return self.full

    def free(self) -> None:
        """Give the buffer's storage back (views autograd saved stay valid, empty until `buffer` refills them)."""
        if self.pending is not None:  # a prefetch nobody used: finish it so every rank's collectives stay matched
            self.pending.work.wait()
            self.pending = None
            self.schedule.account(-self.nbytes)
        if self.filled:
            self.full.untyped_storage().resize_(0)
            self.filled = False
            self.schedule.account(-self.nbytes)

    def scatter_gradients(self, send: torch.Tensor) -> torch.Tensor | None:
        """The gradient scatter of this forward (RestoreWeights.backward): the [E, S] shard gradient now, or None
        when the schedule defers it. Frees the restored buffer: its backward is done."""
        self.free()
        self.released = True
        self.schedule.forget(self)
        return self.schedule.gradient(self, send)


class RestoreSchedule:
    """The coordinator over a model's FSEP layers in forward order (built by `apply_fsep`; a layer built alone gets
    its own). Holds the forward prefetches, each layer's forwards awaiting backward, the deferred gradient
    all-to-alls, and the restored-memory counters (bytes of restored buffers and restores in flight)."""

    def __init__(self, layers, comm_opt: bool = True):
        self.layers = list(layers)
        self.comm_opt = comm_opt
        self._index = {id(layer): i for i, layer in enumerate(self.layers)}
        self._prefetched: dict[int, RestoredExperts] = {}  # layer index -> its next forward's restore, in flight
        self._forwards: dict[int, list[RestoredExperts]] = {i: [] for i in range(len(self.layers))}
        self._deferred: list[tuple[object, PendingGradient]] = []  # (layer, gradient all-to-all in flight)
        self._callback_task: int | None = None  # the backward pass whose end finishes the deferred gradients
        # The autograd input of a restore whose gradient is deferred, in place of the shard: the shard's own
        # gradient node is then reached only by the deferred gradient (one accumulation, one run of its hooks).
        self.anchor = torch.empty(0, requires_grad=True)
        self.live_bytes = 0  # restored buffers filled + restores in flight, now
        self.peak_bytes = 0  # the most live_bytes since reset_peak

    # ---- bookkeeping -----------------------------------------------------------------------------------------
    def account(self, delta: int) -> None:
        self.live_bytes += delta
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)

    def reset_peak(self) -> None:
        self.peak_bytes = self.live_bytes

    def restore_group(self, layer):
        return layer.groups.restore_group if self.comm_opt else layer.groups.ep

    def forget(self, restored: RestoredExperts) -> None:
        forwards = self._forwards[self._index[id(restored.layer)]]
        if restored in forwards:
            forwards.remove(restored)

    def _awaiting_backward(self, i: int) -> RestoredExperts | None:
        forwards = self._forwards.get(i)
        return forwards[-1] if forwards else None

    # ---- forward ---------------------------------------------------------------------------------------------
    def begin_forward(self, layer) -> RestoredExperts:
        """This forward's restore state (FSEPMoE.start_restore): a recompute's is its forward's; otherwise the
        prefetched one when its layout is still the layer's, else a new one (launched now under comm_opt)."""
        i = self._index[id(layer)]
        if in_backward():
            restored = self._awaiting_backward(i)
            if restored is None:
                raise RuntimeError("FSEP layer recomputed inside backward with no forward awaiting its backward")
            restored.recompute = True
            self.begin_backward(restored)
            return restored
        restored = self._prefetched.pop(i, None)
        if restored is not None and restored.layout is not layer._layout:
            restored.free()  # re-laid out since the prefetch
            restored = None
        if restored is None:
            restored = RestoredExperts(layer, self, layer._layout)
        forwards = self._forwards[i]
        forwards.append(restored)
        del forwards[:-MAX_PENDING_FORWARDS]
        if self.comm_opt:
            restored.start()
        return restored

    def before_compute(self, restored: RestoredExperts) -> None:
        """Launch the next layer's restore before this layer's expert compute (forward, comm_opt only)."""
        i = self._index[id(restored.layer)]
        if not self.comm_opt or restored.recompute or i + 1 >= len(self.layers):
            return
        nxt = self.layers[i + 1]
        old = self._prefetched.get(i + 1)
        if old is not None and old.layout is nxt._layout:
            return
        if old is not None:
            old.free()
        restored_next = RestoredExperts(nxt, self, nxt._layout)
        restored_next.start()
        self._prefetched[i + 1] = restored_next

    def end_compute(self, restored: RestoredExperts, out: torch.Tensor) -> None:
        """After the layer's expert compute: in free mode (or without autograd) give the restored buffer back, and
        have the gradient's arrival at `out` restore it again for the backward."""
        if restored.recompute:
            return  # the backward is next: keep it
        if restored.layer.keep_restored and torch.is_grad_enabled():
            return
        if out.requires_grad:
            out.register_hook(lambda grad: self.begin_backward(restored))
        restored.free()

    # ---- backward --------------------------------------------------------------------------------------------
    def begin_backward(self, restored: RestoredExperts) -> None:
        """The layer's backward starts: restore its experts again (waiting for a prefetch) and launch the previous
        layer's restore (comm_opt)."""
        if restored.backward_started:
            return
        restored.backward_started = True
        restored.start()
        i = self._index[id(restored.layer)]
        if self.comm_opt and i > 0:
            prev = self._awaiting_backward(i - 1)
            if prev is not None and not prev.layer.keep_restored:
                prev.start()
        restored.buffer()

    def gradient(self, restored: RestoredExperts, send: torch.Tensor) -> torch.Tensor | None:
        """The gradient scatter of one forward: synchronous (returns the shard gradient), or under comm_opt launched
        and deferred (returns None; `finish_gradients` adds it to the shard's .grad)."""
        layer = restored.layer
        pending = start_gradient_scatter(send, restored.layout, layer.groups.rank, layer.num_experts,
                                         self.restore_group(layer))
        if not restored.defer_gradient:
            return pending.finish(layer.expert_shard.dtype)
        self.finish_gradients()  # the previous layer's: one in flight, overlapping this layer's remaining backward
        self._deferred.append((layer, pending))
        task = torch._C._current_graph_task_id()
        if self._callback_task != task:  # once per backward pass (a failed one never ran its callback)
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)
            self._callback_task = task
        return None

    def _end_of_backward(self) -> None:
        self._callback_task = None
        self.finish_gradients()

    def finish_gradients(self) -> None:
        """Finish every deferred gradient all-to-all and accumulate it into its shard's .grad (runs by itself at the
        end of each backward pass, so a trainer need not call it; call it before reading shard gradients only when
        autograd was driven without finishing a backward pass, e.g. torch.autograd.grad)."""
        deferred, self._deferred = self._deferred, []
        for layer, pending in deferred:
            shard = layer.expert_shard
            # Through autograd (a backward rooted at the leaf), not a write to .grad: it accumulates as autograd
            # would and runs the hooks a wrapper registered on the shard's gradient (DeepSpeed's, FSDP-style).
            torch.autograd.backward(shard, pending.finish(shard.dtype))
