"""Dispatch and compute cases run inside one spawned gloo group per world size (see fsep_cases): ranks with uneven
and zero tokens against the single-process reference (aux loss included), the one host sync per layer forward,
and the process groups' devices per node.

Each case returns None on success or raises; `all_cases(rank, n)` runs them all and returns {name: error or None}.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from tests.training.distributed import run_each
from tests.training.fsep_cases import AUX, random_placement, rel
from training.fsep import FSEPGroups, apply_ep, apply_fsdp_ep, apply_fsep
from training.moe import ReferenceMoE
from training.placement import Placement

H, F = 8, 12


def token_counts(n: int) -> list[int]:
    """Tokens per rank: rank 0 has none, the others uneven."""
    return [0] + [5 + 7 * r for r in range(1, n)]


def setup(n, e, k, seed, counts):
    torch.manual_seed(seed)
    ref = ReferenceMoE(H, F, e, k)
    xs = [torch.randn(t, H) for t in counts]
    gs = [torch.randn(t, H) for t in counts]
    return ref, xs, gs


def compare_uneven(layer, ref, xs, gs, rank, targets=None, tol=1e-5):
    """Outputs, aux loss, router and expert gradients of the layer (rank r runs chunk r) against the reference run
    on every chunk, loss sum_r <y_r, g_r> + AUX * aux_r; every value finite."""
    ref.zero_grad()
    loss, y_ref, aux_ref = 0.0, None, None
    for r, (x, g) in enumerate(zip(xs, gs)):
        y, aux = ref(x, None if targets is None else targets[r])
        assert torch.isfinite(aux), f"reference aux loss of chunk {r} ({len(x)} tokens) is {float(aux)}"
        loss = loss + (y * g).sum() + AUX * aux
        if r == rank:
            y_ref, aux_ref = y.detach(), aux.detach()
    loss.backward()
    layer.zero_grad()
    y, aux = layer(xs[rank], None if targets is None else targets[rank])
    ((y * gs[rank]).sum() + AUX * aux).backward()
    assert abs(float(aux) - float(aux_ref)) <= tol * max(1.0, abs(float(aux_ref))), (float(aux), float(aux_ref))
    if len(xs[rank]):
        assert rel(y.detach(), y_ref) < tol, f"output rel err {rel(y.detach(), y_ref)}"
    else:
        assert y.shape == (0, H) and float(aux) == 0.0
    router_grad = layer.router.weight.grad.clone()
    dist.all_reduce(router_grad)
    assert torch.isfinite(router_grad).all(), "router gradient not finite"
    assert rel(router_grad, ref.router.weight.grad) < tol, f"router grad rel err {rel(router_grad, ref.router.weight.grad)}"
    for name, a, b in zip(("w1", "w3", "w2"), layer.gather_expert_weights(grad=True),
                          (ref.w1.grad, ref.w3.grad, ref.w2.grad)):
        assert torch.isfinite(a).all(), f"{name} gradient not finite"
        assert rel(a, b) < tol, f"{name} grad rel err {rel(a, b)}"


# ---------------------------------------------------------------------------------------------------------------
def case_uneven_and_zero_tokens_with_aux(rank, n):
    """Rank 0 has no tokens (its aux loss must be 0, not NaN, or the all-reduced router gradient is NaN on every
    rank); the others have different counts. FSEP (replicas, a duplicate on one device, node-local rule, planner
    fractions), FSDP+EP and EP."""
    rng = np.random.default_rng(41)
    counts = token_counts(n)
    groups = FSEPGroups(dist.group.WORLD, 1)
    for k in (1, 2):
        e, c = n + 1, 3
        ref, xs, gs = setup(n, e, k, 1500 + k, counts)
        placement = random_placement(rng, n, e, c, twice_on_one=True)
        compare_uneven(apply_fsep(ref, groups, c, placement), ref, xs, gs, rank)
        dpn = 2 if n % 2 == 0 else 1
        compare_uneven(apply_fsep(ref, FSEPGroups(dist.group.WORLD, dpn), c, placement), ref, xs, gs, rank)
        layer = apply_fsep(ref, groups, c)
        layer.set_placement(placement, rng.random((n, e, n)) * (placement.holders()[None] > 0))
        compare_uneven(layer, ref, xs, gs, rank)
    ref, xs, gs = setup(n, 2 * n, 2, 1600, counts)
    compare_uneven(apply_fsdp_ep(ref, groups, 2), ref, xs, gs, rank)
    compare_uneven(apply_ep(ref, groups), ref, xs, gs, rank)


def case_a_rank_that_receives_nothing(rank, n):
    """Replayed counts that send no route to device 0's experts, which itself has no tokens: device 0 computes no row
    and still joins every collective (restore backward included); gradients of its experts are zero."""
    e, k = 2 * n, 2
    counts = token_counts(n)
    ref, xs, gs = setup(n, e, k, 1700, counts)
    placement = Placement(np.arange(e).reshape(n, 2), e)  # device 0 holds experts 0 and 1 only
    targets = []
    for t in counts:
        tc = np.zeros(e, dtype=np.int64)
        tc[2:] = t * k // (e - 2)
        tc[2:2 + t * k - int(tc.sum())] += 1
        targets.append(torch.from_numpy(tc))
    for layer in (apply_fsep(ref, FSEPGroups(dist.group.WORLD, 1), 2, placement),
                  apply_ep(ref, FSEPGroups(dist.group.WORLD, 1))):
        compare_uneven(layer, ref, xs, gs, rank, targets)
        w1, _, _ = layer.gather_expert_weights(grad=True)
        assert float(w1[:2].abs().max()) == 0.0 and float(w1[2:].abs().max()) > 0


# Calls that read device data back to the host on CUDA (a stream sync each): explicit copies and conversions, and
# ops whose output size depends on the data. On gloo/CPU the same calls are what a GPU run would sync on.
SYNC_CALLS = {"cpu", "item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero",
              "bincount", "unique", "masked_select", "argwhere"}


class SyncCounter(TorchFunctionMode):
    """Counts calls in SYNC_CALLS (and repeat_interleave without output_size) while active."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in SYNC_CALLS or (name == "repeat_interleave" and kwargs.get("output_size") is None):
            self.calls.append(name)
        return func(*args, **kwargs)


def case_one_host_sync_per_layer_forward(rank, n):
    """Exactly one host read per forward of FSEP (FSEP rule, planner fractions, duplicates), FSDP+EP and EP: the
    count exchange's single transfer."""
    rng = np.random.default_rng(43)
    e, c, k = n + 1, 3, 2
    torch.manual_seed(1800)
    ref = ReferenceMoE(H, F, e, k)
    x = torch.randn(16 + 3 * rank, H)
    groups = FSEPGroups(dist.group.WORLD, 1)
    placement = random_placement(rng, n, e, c, twice_on_one=True)
    weighted = apply_fsep(ref, groups, c)
    weighted.set_placement(placement, rng.random((n, e, n)) * (placement.holders()[None] > 0))
    ref4 = ReferenceMoE(H, F, 2 * n, k)
    layers = {"fsep": apply_fsep(ref, groups, c, placement), "fsep_weights": weighted,
              "fsep_no_overlap": apply_fsep(ref, groups, c, placement, comm_opt=False),
              "fsdp_ep": apply_fsdp_ep(ref4, groups, 2), "ep": apply_ep(ref4, groups)}
    for name, layer in layers.items():
        layer(x)  # first call outside the counter (one-off lazy initialisation is not per-forward cost)
        with SyncCounter() as counter:
            y, aux = layer(x)
        assert len(counter.calls) == 1, f"{name}: host reads {counter.calls}"
        (y.sum() + aux).backward()


def case_devices_per_node_from_launcher(rank, n):
    world = dist.group.WORLD
    assert FSEPGroups.from_launcher(world, {"LOCAL_WORLD_SIZE": str(n)}).devices_per_node == n
    assert FSEPGroups.from_launcher(world, {}, 1).devices_per_node == 1
    for bad, msg in ((lambda: FSEPGroups.from_launcher(world, {}), "pass it explicitly"),
                     (lambda: FSEPGroups.from_launcher(world, {"LOCAL_WORLD_SIZE": str(n)}, 1), "disagrees"),
                     (lambda: FSEPGroups(world, n + 1), "does not divide"),
                     (lambda: FSEPGroups(world, 0), "does not divide")):
        try:
            bad()
            raise AssertionError(f"accepted: expected {msg!r}")
        except ValueError as err:
            assert msg in str(err) and "\n" not in str(err), str(err)


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


def all_cases(rank, n):
    return run_each(CASES, rank, n)
