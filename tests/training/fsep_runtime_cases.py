"""The FSEP runtime's memory lifecycle, communication schedule, layout capture and precision, on a model of several
FSEP layers, against the single-process model (cases run inside one spawned gloo group per world size).

Every rank builds the same MoEDecoder and token batches from the same seed; the reference runs every rank's batch
and sums the losses, the distributed model runs its own and sums dense gradients over ranks (data parallel).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from tests.training.distributed import run_each
from tests.training.fsep_cases import random_placement, rel
from training.fsep import FSEPGroups, apply_fsep, distributed_layers
from training.fsep import restore as restore_ops
from training.fsep import schedule as schedule_mod
from training.model import ModelConfig, MoEDecoder, lm_loss
from training.moe import ReferenceMoE

L, E, K, C = 3, 4, 2, 2  # layers, experts, top-k, slots per device
B, S = 2, 8  # sequences per rank, positions
CFG = ModelConfig(vocab_size=64, hidden=16, ffn=24, num_layers=L, num_heads=2, num_kv_heads=1, num_experts=E,
                  top_k=K, max_seq_len=S, aux_loss_coef=0.1)


def batches(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CFG.vocab_size, (n, B, S), generator=g)


def loss_of(model, tokens):
    out = model(tokens)
    return lm_loss(out.logits, tokens) + out.aux_loss


def ref_grads(ref, micro_batches) -> dict[str, torch.Tensor]:
    """Gradients of the sum over micro-batches and ranks of each rank's loss, in one process."""
    ref.zero_grad()
    for tokens in micro_batches:  # [N, B, S] each
        sum(loss_of(ref, tokens[r]) for r in range(tokens.shape[0])).backward()
    return {name: p.grad.clone() for name, p in ref.named_parameters()}


def dist_grads(model) -> dict[str, torch.Tensor]:
    """The distributed model's gradients in the reference's names: dense summed over ranks, experts all-gathered."""
    out = {}
    for name, p in model.named_parameters():
        if ".moe." not in name:
            g = p.grad.clone()
            dist.all_reduce(g)
            out[name] = g
    for i, layer in enumerate(distributed_layers(model)):
        g = layer.router.weight.grad.clone()
        dist.all_reduce(g)
        out[f"blocks.{i}.moe.router.weight"] = g
        for part, g in zip(("w1", "w3", "w2"), layer.gather_expert_weights(grad=True)):
            out[f"blocks.{i}.moe.{part}"] = g
    return out


def assert_grads_close(got, want, tol=1e-5):
    assert set(got) == set(want), sorted(set(got) ^ set(want))
    for name in want:
        assert rel(got[name], want[name]) < tol, f"{name}: rel err {rel(got[name], want[name])}"


def build(groups, **kw):
    ref = MoEDecoder(CFG, seed=0)
    return ref, apply_fsep(copy.deepcopy(ref), groups, C, **kw)


def relayout(model, rng, n):
    for layer in distributed_layers(model):
        layer.set_placement(random_placement(rng, n, E, C, twice_on_one=n * C > E + 1))


class Checkpointed(nn.Module):
    """A block run under activation checkpointing (its forward recomputed during backward)."""

    def __init__(self, block, reentrant: bool):
        super().__init__()
        self.block, self.reentrant = block, reentrant

    def forward(self, *args):
        return checkpoint(self.block, *args, use_reentrant=self.reentrant)


def checkpointed(model, reentrant: bool):
    for i, block in enumerate(model.blocks):
        model.blocks[i] = Checkpointed(block, reentrant)
    return model


def unwrap_names(grads):
    return {name.replace(".block.", "."): g for name, g in grads.items()}


# ---------------------------------------------------------------------------------------------------------------
def case_model_of_several_layers(rank, n):
    """L FSEP layers (random layouts with replicas and a duplicate on one device) in every mode: free or keep the
    restored experts, comm_opt on (with a separate restore group) or off; outputs and all gradients equal the
    single-process model's."""
    tokens = batches(n, seed=1)
    rng = np.random.default_rng(3)
    for groups, kw in ((FSEPGroups.create(dist.group.WORLD, devices_per_node=1), {}),
                       (FSEPGroups(dist.group.WORLD, 1), {"keep_restored": True}),
                       (FSEPGroups(dist.group.WORLD, 1), {"comm_opt": False}),
                       (FSEPGroups(dist.group.WORLD, 1), {"comm_opt": False, "keep_restored": True})):
        ref, model = build(groups, **kw)
        relayout(model, rng, n)
        want = ref_grads(ref, [tokens])
        logits_ref = ref(tokens[rank]).logits
        logits = model(tokens[rank]).logits
        assert rel(logits.detach(), logits_ref.detach()) < 1e-5, kw
        model.zero_grad()
        loss_of(model, tokens[rank]).backward()
        assert_grads_close(dist_grads(model), want)


def case_checkpointing_with_relayouts(rank, n):
    """Every block under activation checkpointing (reentrant and not), each layer re-laid out between forward and
    backward: the recompute and the backward use the forward's layout; gradients equal the reference's."""
    tokens = batches(n, seed=2)
    rng = np.random.default_rng(5)
    ref = MoEDecoder(CFG, seed=0)
    want = ref_grads(ref, [tokens])
    for reentrant in (False, True):
        for keep in (False, True):
            model = checkpointed(apply_fsep(copy.deepcopy(ref), FSEPGroups.create(dist.group.WORLD, devices_per_node=1), C,
                                            keep_restored=keep), reentrant)
            relayout(model, rng, n)
            loss = loss_of(model, tokens[rank])
            relayout(model, rng, n)  # between forward and backward
            loss.backward()
            assert_grads_close(unwrap_names(dist_grads(model)), want)


def case_accumulation_across_layouts(rank, n):
    """Gradient accumulation over 3 micro-batches, each under a different layout, one of them re-laid out between
    its forward and backward, and two forwards in flight at once: the accumulated gradients equal the reference's."""
    mbs = [batches(n, seed=10 + i) for i in range(3)]
    rng = np.random.default_rng(7)
    ref, model = build(FSEPGroups.create(dist.group.WORLD, devices_per_node=1))
    want = ref_grads(ref, [mbs[0], mbs[1], mbs[2][:, :1], mbs[2][:, 1:]])
    model.zero_grad()
    relayout(model, rng, n)
    loss_of(model, mbs[0][rank]).backward()
    relayout(model, rng, n)
    loss = loss_of(model, mbs[1][rank])
    relayout(model, rng, n)
    loss.backward()
    first = loss_of(model, mbs[2][rank][:1])  # two forwards awaiting backward; backward in reverse order
    relayout(model, rng, n)
    second = loss_of(model, mbs[2][rank][1:])
    second.backward()
    first.backward()
    assert_grads_close(dist_grads(model), want)


def forward_saving(model, tokens) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The loss, and every tensor autograd saved for its backward."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        return loss_of(model, tokens), saved


def case_memory_lifecycle(rank, n):
    """Free mode: no restored expert outlives its layer's forward (after the forward no restored byte is live, and
    the views of each layer's restored buffer that autograd saved have empty storage), and the peak over
    forward+backward is at most two layers' restored experts (the prefetch window); keep mode holds all L layers'
    from forward to backward. Both give everything back after the backward."""
    tokens = batches(n, seed=4)
    for keep in (False, True):
        _, model = build(FSEPGroups.create(dist.group.WORLD, devices_per_node=1), keep_restored=keep)
        layers = distributed_layers(model)
        sched = layers[0].schedule
        per_layer = C * n * layers[0].shard_width * 4  # U*N*S fp32 bytes: round-robin puts C distinct experts here
        loss, saved = forward_saving(model, tokens[rank])
        after_forward = sched.live_bytes
        storages = {t.untyped_storage()._cdata: t for t in saved}
        buffers = [sched._forwards[i][-1].full.untyped_storage() for i in range(L)]
        assert all(b._cdata in storages for b in buffers)  # compute's backward needs the restored experts
        if keep:
            assert after_forward == L * per_layer, (after_forward, per_layer)
            assert all(b.nbytes() == per_layer for b in buffers)
        else:
            assert after_forward == 0, after_forward
            assert all(b.nbytes() == 0 for b in buffers)
        sched.reset_peak()
        loss.backward()
        if keep:
            assert sched.peak_bytes == L * per_layer
        else:
            assert per_layer <= sched.peak_bytes <= 2 * per_layer, (sched.peak_bytes, per_layer)
        assert sched.live_bytes == 0


def traced_step(model, tokens) -> tuple[list, list]:
    """Forward and backward events of one step, in order: ("restore", i) a restore all-to-all launched for layer i,
    ("compute", i) layer i's expert compute, ("grad_start", i) / ("grad_finish", i) its gradient all-to-all."""
    layers = distributed_layers(model)
    index = {id(layer.expert_shard): i for i, layer in enumerate(layers)}
    events = []
    real_start, real_scatter, real_finish = (schedule_mod.start_restore, schedule_mod.start_gradient_scatter,
                                             restore_ops.PendingGradient.finish)

    def start(shard, *a, **kw):
        events.append(("restore", index[id(shard)]))
        return real_start(shard, *a, **kw)

    def scatter(send, layout, *a, **kw):
        i = next(i for i, layer in enumerate(layers) if layer._layout is layout)
        events.append(("grad_start", i))
        pending = real_scatter(send, layout, *a, **kw)
        pending.layer_index = i
        return pending

    def finish(pending, dtype):
        events.append(("grad_finish", pending.layer_index))
        return real_finish(pending, dtype)

    def traced(compute, i):
        def run(*a):
            events.append(("compute", i))
            return compute(*a)
        return run

    for i, layer in enumerate(layers):
        layer.compute = traced(layer.compute, i)
    schedule_mod.start_restore, schedule_mod.start_gradient_scatter = start, scatter
    restore_ops.PendingGradient.finish = finish
    try:
        loss = loss_of(model, tokens)
        forward = list(events)
        loss.backward()
    finally:
        schedule_mod.start_restore, schedule_mod.start_gradient_scatter = real_start, real_scatter
        restore_ops.PendingGradient.finish = real_finish
    return forward, events[len(forward):]


def case_schedule_order(rank, n):
    """comm_opt: layer i+1's restore is launched before layer i's expert compute; in backward layer i-1's restore is
    launched before layer i's gradient scatter, and layer i's gradient all-to-all is finished only after layer i-1's
    is launched. comm_opt off: each restore launched right before its own compute, gradients finished at once."""
    tokens = batches(n, seed=6)
    for comm_opt in (True, False):
        _, model = build(FSEPGroups.create(dist.group.WORLD, devices_per_node=1), comm_opt=comm_opt)
        forward, backward = traced_step(model, tokens[rank])
        pos = {e: forward.index(e) for e in forward}
        bpos = {e: backward.index(e) for e in backward}
        for i in range(L - 1):
            assert (pos[("restore", i + 1)] < pos[("compute", i)]) == comm_opt, (comm_opt, forward)
        for i in range(1, L):
            assert (bpos[("restore", i - 1)] < bpos[("grad_start", i)]) == comm_opt, (comm_opt, backward)
            assert (bpos[("grad_finish", i)] > bpos[("grad_start", i - 1)]) == comm_opt, (comm_opt, backward)
        assert all(bpos[("grad_finish", i)] > bpos[("grad_start", i)] for i in range(L))


def case_deferred_gradient_runs_shard_hooks(rank, n):
    """With the gradient all-to-all deferred (comm_opt), each shard's gradient still arrives through autograd: its
    post-accumulate hook (what DeepSpeed's ZeRO and bf16 optimizers hook) runs once per backward, with the
    gradient already in .grad, and accumulation over two backwards adds."""
    tokens = batches(n, seed=8)
    _, model = build(FSEPGroups.create(dist.group.WORLD, devices_per_node=1))
    layers = distributed_layers(model)
    seen = {i: [] for i in range(L)}

    def recorder(log):
        return lambda p: log.append(p.grad.detach().clone())

    for i, layer in enumerate(layers):
        layer.expert_shard.register_post_accumulate_grad_hook(recorder(seen[i]))
    model.zero_grad()
    loss_of(model, tokens[rank]).backward()
    assert all(len(v) == 1 for v in seen.values()), {i: len(v) for i, v in seen.items()}
    loss_of(model, tokens[rank]).backward()
    for i, layer in enumerate(layers):
        assert len(seen[i]) == 2
        torch.testing.assert_close(layer.expert_shard.grad, 2 * seen[i][0])


def case_bf16_against_bf16_reference(rank, n):
    """bf16 compute and communication over fp32 shards (restore sends bf16; gradients summed in fp32) against the
    single-process layer under the same bf16 autocast. Tolerance: bf16 keeps 8 significant bits (relative rounding
    2^-9 per value), and the two differ only in the order and grouping of bf16-rounded partial sums (the reference
    rounds each expert's whole-batch gradient once, FSEP each device's share, then adds them in fp32): a few bf16
    roundings, 2e-2 relative. It is checked to be no worse than twice the bf16 reference's own distance to fp32 (plus
    one rounding), so the bound is not vacuous."""
    from tests.training.fsep_cases import setup

    for k in (1, 2):
        e = 2 * n
        ref, x, g = setup(n, e, k, seed=1300 + k)
        x, g = x.bfloat16(), g.bfloat16()
        layer = apply_fsep(ref, FSEPGroups.create(dist.group.WORLD, devices_per_node=1), 3, random_placement(np.random.default_rng(k), n,
                                                                                           e, 3, twice_on_one=True),
                           compute_dtype=torch.bfloat16)
        assert layer.expert_shard.dtype == torch.float32
        grads = {}
        for name, precise in (("bf16", False), ("fp32", True)):
            ref.zero_grad()
            ys = []
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not precise):
                for r in range(n):
                    y, aux = ref(x[r].float() if precise else x[r])
                    ys.append(y.detach().float())
                    ((y.float() * g[r].float()).sum() + 0.1 * aux).backward()
            grads[name] = (torch.stack(ys), [p.grad.clone() for p in (ref.w1, ref.w3, ref.w2)])
        layer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            w = layer.restore_weights()
            assert all(m.dtype == torch.bfloat16 for m in w)  # restored (and so received) in bf16
            y, aux = layer(x[rank])
            ((y.float() * g[rank].float()).sum() + 0.1 * aux).backward()
        assert y.dtype == torch.bfloat16
        assert layer.expert_shard.grad.dtype == torch.float32
        got = layer.gather_expert_weights(grad=True)
        (y16, g16), (y32, g32) = grads["bf16"], grads["fp32"]
        y = y.detach().float()
        assert rel(y, y16[rank]) < 2e-2, rel(y, y16[rank])
        assert rel(y, y32[rank]) <= 2 * rel(y16[rank], y32[rank]) + 2 ** -8
        for a, b, c in zip(got, g16, g32):
            assert rel(a, b) < 2e-2, rel(a, b)
            assert rel(a, c) <= 2 * rel(b, c) + 2 ** -8, (rel(a, c), rel(b, c))


def case_standalone_layer_defaults(rank, n):
    """A layer built alone gets its own schedule; with the default (free, comm_opt) it equals the reference, and a
    ReferenceMoE through apply_fsep with keep_restored too."""
    from tests.training.fsep_cases import compare, setup

    ref, x, g = setup(n, 2 * n, 2, seed=1400)
    for keep in (False, True):
        layer = apply_fsep(ref, FSEPGroups(dist.group.WORLD, 1), 2, keep_restored=keep)
        assert layer.schedule.layers == [layer]
        compare(layer, ref, x, g, rank)
    assert isinstance(ref, ReferenceMoE)


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


def all_cases(rank, n):
    torch.manual_seed(0)
    return run_each(CASES, rank, n)
