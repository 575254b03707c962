"""Parallelism transforms over whole models (MoEDecoder and Hugging Face Mixtral) on 2 gloo ranks against the same
model in one process: logits, loss and every gradient. All cases share one spawned group (start-up dominates)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.training.distributed import case_checker
from tests.training.transform_cases import CASES, all_cases
from training.fsep import apply_fsep

check = case_checker(all_cases, timeout_s=300)


@pytest.mark.parametrize("case", sorted(CASES))
def test_transform_case(case):
    check(case, 2)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_transform_case_4_ranks(case):
    check(case, 4)


def test_model_without_moe_is_refused():
    with pytest.raises(ValueError, match="holds no MoE block"):
        apply_fsep(nn.Sequential(nn.Linear(4, 4)), groups=None, slots_per_device=1)


def test_hf_top1_block_is_refused():
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    from training.hf import reference_view

    block = MixtralSparseMoeBlock(MixtralConfig(hidden_size=8, intermediate_size=4, num_local_experts=2,
                                                num_experts_per_tok=1))
    with pytest.raises(ValueError, match="num_experts_per_tok = 1"):
        reference_view(block)


def test_hf_reference_view_shares_the_block_tensors():
    """The view behind the conversion is the HF block's own weights (w1 | w3 = gate_up_proj rows, w2 = down_proj),
    and computes the block's output."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    from training.hf import reference_view

    torch.manual_seed(0)
    block = MixtralSparseMoeBlock(MixtralConfig(hidden_size=8, intermediate_size=6, num_local_experts=4,
                                                num_experts_per_tok=2))
    for p in block.parameters():
        nn.init.normal_(p)
    ref = reference_view(block)
    assert ref.w1.data_ptr() == block.experts.gate_up_proj.data_ptr() and ref.router.weight is block.gate.weight
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(ref(x)[0], block(x))
