"""Cases run inside one spawned gloo group per world size (process start-up dominates on 2 cores).

Each case returns None on success or raises; `all_cases(rank, n)` runs them all and returns {name: error or None}.
Every rank builds the same ReferenceMoE and inputs from the same seed; the reference runs all ranks' token chunks.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from tests.training.distributed import run_each
from tests.training.restore_reference import restore_experts
from training.fsep import (
    FSEPGroups,
    FSEPMoE,
    apply_ep,
    apply_fsdp_ep,
    apply_fsep,
    export_reference,
)
from training.moe import ReferenceMoE
from training.placement import Placement

H, F, T = 8, 12, 16  # hidden, expert FFN, tokens per rank
AUX = 0.1  # aux-loss coefficient in the test loss


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def setup(n, e, k, seed):
    torch.manual_seed(seed)
    ref = ReferenceMoE(H, F, e, k)
    x = torch.randn(n, T, H)
    g = torch.randn(n, T, H)  # upstream gradient of each rank's output
    return ref, x, g


def ref_step(ref, x, g, targets=None):
    """Reference outputs per rank and the gradients of sum_r [<y_r, g_r> + AUX * aux_r]."""
    ref.zero_grad()
    ys, loss = [], 0.0
    for r in range(x.shape[0]):
        y, aux = ref(x[r], None if targets is None else targets[r])
        ys.append(y.detach())
        loss = loss + (y * g[r]).sum() + AUX * aux
    loss.backward()
    return torch.stack(ys), (ref.router.weight.grad, ref.w1.grad, ref.w3.grad, ref.w2.grad)


def dist_step(layer, x, g, rank, targets=None):
    layer.zero_grad()
    y, aux = layer(x[rank], None if targets is None else targets[rank])
    ((y * g[rank]).sum() + AUX * aux).backward()
    router_grad = layer.router.weight.grad.clone()
    dist.all_reduce(router_grad)  # the router is data parallel: its gradient sums over ranks
    return y.detach(), router_grad, layer.gather_expert_weights(grad=True)


def compare(layer, ref, x, g, rank, targets=None, tol=1e-5):
    """Outputs, router gradient and every expert's gradient (all ranks' storage gathered) equal the reference's."""
    y_ref, (gr, g1, g3, g2) = ref_step(ref, x, g, targets)
    y, router_grad, experts = dist_step(layer, x, g, rank, targets)
    assert rel(y, y_ref[rank]) < tol, f"output rel err {rel(y, y_ref[rank])}"
    assert rel(router_grad, gr) < tol, f"router grad rel err {rel(router_grad, gr)}"
    assert gr.norm() > 0 or ref.num_experts == 1  # one expert: softmax is constant
    for name, a, b in zip(("w1", "w3", "w2"), experts, (g1, g3, g2)):
        assert rel(a, b) < tol, f"{name} grad rel err {rel(a, b)}"


def reference_shard(w1, w3, w2, n, rank) -> torch.Tensor:
    """[E, S] piece `rank` of the flat experts (w1 | w3 | w2) zero padded to N*S, computed from the full tensors
    without the runtime: what device `rank` must hold of weights w (or of gradients, given the reference's)."""
    flat = torch.cat([w1.flatten(1), w3.flatten(1), w2.flatten(1)], 1)
    width = math.ceil(flat.shape[1] / n)
    padded = torch.zeros(flat.shape[0], n * width)
    padded[:, : flat.shape[1]] = flat
    return padded[:, rank * width:(rank + 1) * width]


def random_placement(rng, n, e, c, twice_on_one=False):
    slots = rng.integers(0, e, size=(n, c))
    pos = rng.permutation(n * c)[:e]
    slots.ravel()[pos] = np.arange(e)  # every expert has at least one replica
    if twice_on_one:
        j = int(rng.integers(e))
        slots[0, :2] = j
        for m in np.setdiff1d(np.arange(e), slots.ravel()):  # re-plant experts the overwrite removed
            free = [i for i in range(n * c) if i >= 2 and np.sum(slots == slots.ravel()[i]) > 1]
            slots.ravel()[free[0]] = m
    return Placement(slots, e)


def skewed_targets(rng, n, e, k):
    """Per-rank counts with several experts at zero and one hot expert (at most T per expert)."""
    out = []
    for _ in range(n):
        c = np.zeros(e, dtype=np.int64)
        active = rng.choice(e, size=max(k, e // 2), replace=False)
        c[active[0]] = T  # hot: every token
        rest = T * k - T
        share = rng.multinomial(rest, np.ones(len(active) - 1) / (len(active) - 1))
        while share.max() > T:
            share = rng.multinomial(rest, np.ones(len(active) - 1) / (len(active) - 1))
        c[active[1:]] = share
        out.append(torch.tensor(c))
    return out


# ---------------------------------------------------------------------------------------------------------------
def case_identity_layout(rank, n):
    for k in (1, 2):
        e = 2 * n
        ref, x, g = setup(n, e, k, seed=1 + k)
        layer = apply_fsep(ref, FSEPGroups(dist.group.WORLD, 1), 2, Placement(np.arange(e).reshape(n, 2), e))
        compare(layer, ref, x, g, rank)


def case_random_layouts_with_replicas(rank, n):
    rng = np.random.default_rng(7)
    for trial in range(6):
        k, c = (1, 2)[trial % 2], (2, 3, 4)[trial % 3]
        e = int(rng.integers(max(k, 2), n * c))
        ref, x, g = setup(n, e, k, seed=100 + trial)
        placement = random_placement(rng, n, e, c)
        assert placement.replica_counts().max() > 1
        compare(apply_fsep(ref, FSEPGroups(dist.group.WORLD, 1), c, placement), ref, x, g, rank)


def case_expert_twice_on_one_device(rank, n):
    rng = np.random.default_rng(11)
    for k in (1, 2):
        e, c = n + 1, 3
        ref, x, g = setup(n, e, k, seed=200 + k)
        placement = random_placement(rng, n, e, c, twice_on_one=True)
        assert placement.slots[0, 0] == placement.slots[0, 1]
        compare(apply_fsep(ref, FSEPGroups(dist.group.WORLD, 1), c, placement), ref, x, g, rank)


def case_one_slot_per_device(rank, n):
    for k, e in ((1, n), (2, n), (1, n - 1)):  # C = 1; with E < N one expert is replicated
        ref, x, g = setup(n, e, k, seed=300 + e + k)
        slots = (np.arange(n) % e).reshape(n, 1)
        compare(apply_fsep(ref, FSEPGroups(dist.group.WORLD, 1), 1, Placement(slots, e)), ref, x, g, rank)


def case_skewed_replay_with_idle_experts(rank, n):
    rng = np.random.default_rng(13)
    for k in (1, 2):
        e, c = 2 * n, 3
        ref, x, g = setup(n, e, k, seed=400 + k)
        targets = skewed_targets(rng, n, e, k)
        assert any((t == 0).any() for t in targets)
        layer = apply_fsep(ref, FSEPGroups(dist.group.WORLD, 1), c, random_placement(rng, n, e, c))
        compare(layer, ref, x, g, rank, targets)
        y, _ = layer(x[rank], targets[rank])  # the replay gate reproduced the counts exactly
        idx, _, _ = layer.router(x[rank], targets[rank])
        assert torch.equal(torch.bincount(idx.reshape(-1), minlength=e), targets[rank])


def case_node_local_rule_and_planner_weights(rank, n):
    rng = np.random.default_rng(17)
    e, c, k = 2 * n, 3, 2
    ref, x, g = setup(n, e, k, seed=500)
    placement = random_placement(rng, n, e, c)
    dpn = 2 if n % 2 == 0 else 1
    compare(apply_fsep(ref, FSEPGroups(dist.group.WORLD, dpn), c, placement), ref, x, g, rank)
    weights = rng.random((n, e, n)) * (placement.holders()[None] > 0)  # proportions only on holders
    layer = apply_fsep(ref, FSEPGroups(dist.group.WORLD, 1), c)
    layer.set_placement(placement, weights)
    compare(layer, ref, x, g, rank)


def case_padded_shards(rank, n):
    """P = 3*H*F not divisible by N: the last piece is padded; each rank's whole shard gradient, padding included,
    equals its piece of the single-process reference's gradient padded with zeros."""
    global H, F
    saved = H, F
    H, F = 7, 5  # P = 105
    try:
        rng = np.random.default_rng(23)
        for k in (1, 2):
            e, c = n + 2, 2
            ref, x, g = setup(n, e, k, seed=650 + k)
            layer = apply_fsep(ref, FSEPGroups(dist.group.WORLD, 1), c, random_placement(rng, n, e, c))
            assert layer.shard_width * n > layer.num_elements
            compare(layer, ref, x, g, rank)
            want = reference_shard(ref.w1.grad, ref.w3.grad, ref.w2.grad, n, rank)
            # Element-wise (so a non-zero padding element fails), float32 summation order allowed for.
            torch.testing.assert_close(layer.expert_shard.grad, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    finally:
        H, F = saved


def case_restore_matches_plain_restore(rank, n):
    """The runtime's restore (stacked matrices, fused gradient layout, comm_opt or not) against the plain [C, P]
    restore in tests/training/restore_reference.py: same restored experts, same shard gradient for a random upstream
    gradient, with P not divisible by N and an expert twice on one device."""
    rng = np.random.default_rng(31)
    e, c, h, f = n + 1, 3, 7, 5  # P = 105
    layer = FSEPMoE(h, f, e, 2, c, FSEPGroups(dist.group.WORLD, 1), random_placement(rng, n, e, c, twice_on_one=True))
    torch.manual_seed(40 + rank)
    with torch.no_grad():
        layer.expert_shard.normal_()
    upstream = torch.randn(n, c, layer.num_elements)[rank]  # [C, P], different on every rank
    shard = layer.expert_shard.detach().clone().requires_grad_(True)
    want = restore_experts(shard, layer.layout.slots, layer.num_elements, layer.groups.ep)
    (want * upstream).sum().backward()
    for comm_opt in (False, True):
        layer.schedule.comm_opt = comm_opt
        layer.zero_grad()
        got = layer.restore_weights(layer.start_restore())
        assert got[0].shape[0] == len(set(layer.placement.slots[rank].tolist()))  # a duplicate restored once
        rows = torch.cat([m.flatten(1) for m in got], 1)  # [U, P]
        flat = rows[torch.from_numpy(layer.layout.compute_slot)]  # [C, P]: each slot's restored expert
        assert torch.equal(flat, want.detach())
        (flat * upstream).sum().backward()
        torch.testing.assert_close(layer.expert_shard.grad, shard.grad, rtol=1e-5, atol=1e-5 * float(shard.grad.abs().max()))


def case_no_overlap_same_result(rank, n):
    e, c, k = 2 * n, 2, 2
    ref, x, g = setup(n, e, k, seed=600)
    compare(apply_fsep(ref, FSEPGroups(dist.group.WORLD, 1), c, comm_opt=False), ref, x, g, rank)


def case_max_block_rows_same_result(rank, n):
    """Blocks cut into matmuls of at most 3 rows (and a duplicate expert on a device) give the same outputs and
    gradients; EP with the same tile too."""
    rng = np.random.default_rng(29)
    e, c, k = n + 1, 3, 2
    ref, x, g = setup(n, e, k, seed=700)
    placement = random_placement(rng, n, e, c, twice_on_one=True)
    compare(apply_fsep(ref, FSEPGroups(dist.group.WORLD, 1), c, placement, max_block_rows=3), ref, x, g, rank)
    ref, x, g = setup(n, 2 * n, k, seed=701)
    compare(apply_ep(ref, FSEPGroups(dist.group.WORLD, 1), max_block_rows=3), ref, x, g, rank)


def case_baselines_ep_and_fsdp_ep(rank, n):
    e, k = 2 * n, 2
    ref, x, g = setup(n, e, k, seed=700)
    groups = FSEPGroups(dist.group.WORLD, 1)
    compare(apply_ep(ref, groups), ref, x, g, rank)
    compare(apply_fsdp_ep(ref, groups, 2), ref, x, g, rank)
    targets = skewed_targets(np.random.default_rng(3), n, e, k)
    compare(apply_ep(ref, groups), ref, x, g, rank, targets)


def case_relayouts_leave_parameters_unchanged(rank, n):
    rng = np.random.default_rng(19)
    e, c, k = 2 * n, 3, 2
    ref, x, g = setup(n, e, k, seed=800)
    layer = apply_fsep(ref, FSEPGroups(dist.group.WORLD, 1), c)
    before = [p.detach().clone() for p in layer.parameters()]
    y_ref, _ = ref_step(ref, x, g)
    for i in range(100):
        layer.set_placement(random_placement(rng, n, e, c))
        if i % 10 == 0:  # the output stays the reference's under every layout
            y, aux = layer(x[rank])
            ((y * g[rank]).sum() + aux).backward()
            assert rel(y.detach(), y_ref[rank]) < 1e-5
    for a, b in zip(before, layer.parameters()):
        assert torch.equal(a.view(torch.int32), b.detach().view(torch.int32)), "a parameter bit changed"


def case_optimizer_step_on_shards(rank, n):
    e, c, k = 2 * n, 3, 2
    ref, x, g = setup(n, e, k, seed=900)
    layer = apply_fsep(ref, FSEPGroups(dist.group.WORLD, 1), c, random_placement(np.random.default_rng(5), n, e, c))
    ref_step(ref, x, g)
    torch.optim.Adam(ref.parameters(), lr=1e-2).step()
    layer.zero_grad()
    y, aux = layer(x[rank])
    ((y * g[rank]).sum() + AUX * aux).backward()
    dist.all_reduce(layer.router.weight.grad)
    torch.optim.Adam(layer.parameters(), lr=1e-2).step()
    w1, w3, w2 = layer.gather_expert_weights()
    for a, b in ((w1, ref.w1), (w3, ref.w3), (w2, ref.w2), (layer.router.weight, ref.router.weight)):
        assert rel(a.detach(), b.detach()) < 1e-5
    # This rank's whole shard, padding included, is its piece of the updated reference (padding zero there).
    want = reference_shard(ref.w1.detach(), ref.w3.detach(), ref.w2.detach(), n, rank)
    torch.testing.assert_close(layer.expert_shard.detach(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def case_persistent_parameter_count(rank, n):
    for e, c in ((2 * n, 2), (2 * n + 1, 3)):
        ref, _, _ = setup(n, e, 2, seed=1000)
        layer = apply_fsep(ref, FSEPGroups(dist.group.WORLD, 1), c)
        p = 3 * H * F
        expert_params = sum(q.numel() for name, q in layer.named_parameters() if not name.startswith("router"))
        assert expert_params == e * math.ceil(p / n), (expert_params, e * math.ceil(p / n))
        assert tuple(layer.expert_shard.shape) == (e, math.ceil(p / n))


def case_weights_round_trip(rank, n):
    """Both layers load the same weights: reference -> FSEP / EP -> reference is exact."""
    ref, _, _ = setup(n, 2 * n, 2, seed=1200)
    groups = FSEPGroups(dist.group.WORLD, 1)
    for layer in (apply_fsep(ref, groups, 3), apply_ep(ref, groups)):
        back = export_reference(layer)
        for a, b in zip(back.parameters(), ref.parameters()):
            assert torch.equal(a, b)


def case_clear_errors(rank, n):
    groups = FSEPGroups(dist.group.WORLD, 1)
    try:
        FSEPMoE(H, F, 2 * n + 1, 2, 2, groups)
        raise AssertionError("N*C < E accepted")
    except ValueError as err:
        assert "cannot hold all" in str(err)
    layer = FSEPMoE(H, F, 2 * n, 2, 2, groups)
    for bad, msg in ((Placement(np.zeros((n, 3), dtype=int), 2 * n), "needs [N="),
                     (Placement(np.zeros((n, 2), dtype=int), 2 * n + 1), "needs [N=")):
        try:
            layer.set_placement(bad)
            raise AssertionError("bad placement accepted")
        except ValueError as err:
            assert msg in str(err), str(err)
    try:
        layer.set_placement(np.zeros((n, 2), dtype=int))
        raise AssertionError("array accepted")
    except TypeError:
        pass
    placement = Placement(np.arange(2 * n).reshape(n, 2), 2 * n)
    weights = np.ones((n, 2 * n, n))
    try:
        layer.set_placement(placement, weights)
        raise AssertionError("weights to a non-holder accepted")
    except ValueError as err:
        assert "holds no replica" in str(err)
    # An expert with tokens but no replica: the routing rule names it.
    layer.set_placement(Placement(np.zeros((n, 2), dtype=int), 2 * n))
    try:
        layer(torch.randn(T, H))
        raise AssertionError("unplaced expert accepted")
    except ValueError as err:
        assert "has no replica" in str(err)


def case_deepspeed_dropless_equals_reference(rank, n):
    from training.fsep.deepspeed_ep import DeepSpeedEP

    for k in (1, 2):
        e = 2 * n
        ref, x, g = setup(n, e, k, seed=1100 + k)
        layer = DeepSpeedEP(ref, FSEPGroups(dist.group.WORLD, 1), drop_tokens=False)
        targets = skewed_targets(np.random.default_rng(k), n, e, k)
        for tg in (None, targets):
            ref.zero_grad()
            y_ref = []
            loss = 0.0
            for r in range(n):  # DeepSpeed's top-2 aux loss differs from Switch's: compare the output path only
                y, _ = ref(x[r], None if tg is None else tg[r])
                y_ref.append(y.detach())
                loss = loss + (y * g[r]).sum()
            loss.backward()
            layer.zero_grad()
            y, _ = layer(x[rank], None if tg is None else tg[rank])
            (y * g[rank]).sum().backward()
            assert rel(y.detach(), y_ref[rank]) < 1e-5
            wg = layer.moe.deepspeed_moe.gate.wg.weight.grad.clone()
            dist.all_reduce(wg)
            assert rel(wg, ref.router.weight.grad) < 1e-5
            for i, j in enumerate(layer.local_expert_ids()):
                ex = layer.moe.deepspeed_moe.experts.deepspeed_experts[i]
                for a, b in ((ex.w1, ref.w1), (ex.w3, ref.w3), (ex.w2, ref.w2)):
                    assert rel(a.grad, b.grad[j]) < 1e-5


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


def all_cases(rank, n):
    return run_each(CASES, rank, n)


def all_cases_larger(rank, n):
    """The same cases at larger sizes (slow suite)."""
    global H, F, T
    H, F, T = 32, 48, 128
    return all_cases(rank, n)
