"""Dispatch and compute of the distributed MoE layers: uneven and zero tokens per rank against the reference, one
host sync per layer forward, devices per node from the launcher (gloo, 2 ranks; 4 in the slow suite), and the two
expert-compute kernels against each other (one process)."""

from __future__ import annotations

import pytest
import torch

from tests.training.dispatch_cases import CASES, all_cases
from tests.training.distributed import case_checker
from training.fsep.experts import grouped_swiglu
from training.moe import swiglu

check = case_checker(all_cases, timeout_s=300)


@pytest.mark.parametrize("case", sorted(CASES))
def test_dispatch_case(case):
    check(case, 2)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_dispatch_case_4_ranks(case):
    check(case, 4)


@pytest.mark.parametrize("max_rows", [None, 3])
def test_grouped_kernels_equal_per_group_reference(max_rows):
    """torch._grouped_mm (forced, on the CPU: the kernel a bf16 SM90 GPU runs) and the per-group matmuls (tiled or
    not) against one plain SwiGLU per group, outputs and gradients, with empty groups (a duplicate slot's, and the
    first); then a device with no rows at all still gets (zero) gradients."""
    torch.manual_seed(0)
    g, h, f = 4, 8, 16  # multiples of 4: fp32 rows 16-byte aligned, as _grouped_mm needs
    sizes = [0, 7, 0, 12]
    ends = torch.tensor(sizes).cumsum(0).to(torch.int32)
    x = torch.randn(sum(sizes), h)
    ws = [torch.randn(g, f, h), torch.randn(g, f, h), torch.randn(g, h, f)]
    up = torch.randn(sum(sizes), h)

    def run(fn):
        leaves = [t.clone().requires_grad_(True) for t in [x] + ws]
        y = fn(*leaves)
        y.backward(up)
        return [y.detach()] + [t.grad for t in leaves]

    def reference(xx, w1, w3, w2):
        return torch.cat([swiglu(rows, w1[i], w3[i], w2[i]) for i, rows in enumerate(xx.split(sizes))])

    want = run(reference)
    for grouped in (True, False):
        got = run(lambda xx, w1, w3, w2, grouped=grouped: grouped_swiglu(xx, w1, w3, w2, sizes, ends, max_rows,
                                                                         grouped_mm=grouped))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    leaves = [t.clone().requires_grad_(True) for t in ws]
    y = grouped_swiglu(x[:0], *leaves, [0] * g, torch.zeros(g, dtype=torch.int32), grouped_mm=False)
    y.sum().backward()
    assert y.shape == (0, h) and all(t.grad is not None and float(t.grad.abs().max()) == 0 for t in leaves)
