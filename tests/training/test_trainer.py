"""The trainer on the DeepSpeed engine against single-process PyTorch, on 2 gloo ranks (tests/training/trainer_cases.py).

One spawned group runs every 2-rank case (start-up dominates); a 1-rank group then resumes the 2-rank checkpoint.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from common.launch import run_local
from tests.training.trainer_cases import run_cases
from training.train_config import Parallel

ENV = {"TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))}
CASES = ["case_shards_survive_initialize", "case_fsep_planner_equals_single_process",
         "case_fsep_not_waiting_for_plans_equals_single_process",
         "case_ep_equals_single_process", "case_deepspeed_moe_equals_single_process",
         "case_zero_1_and_2_equal_single_process",
         "case_kill_and_resume_is_exact", "case_kill_and_resume_zero2_and_deepspeed_moe", "case_save_then_next_step",
         "case_bf16_equals_bf16_single_process"]


def _check(results: list[dict], cases: list[str]) -> dict:
    for name in cases:
        errors = [f"rank {r}:\n{res[name]}" for r, res in enumerate(results) if res[name]]
        assert not errors, f"{name} failed\n" + "\n".join(errors)
    return results[0]["_ctx"]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trainer")
    res = run_local(run_cases, 2, "gloo", args=(CASES, str(tmp), 4), env=ENV, timeout_s=900)
    return tmp, res


@pytest.mark.parametrize("case", CASES)
def test_two_rank_case(two_ranks, case):
    """shards survive deepspeed.initialize; FSEP (layout re-planned each step), EP and DeepSpeed-MoE steps equal
    single-process training (1e-5 relative, 4 steps x 2 micro-batches, clipping on); kill-and-resume is exact."""
    _check(two_ranks[1], [case])


def test_resume_on_one_rank_continues_with_the_same_loss(two_ranks):
    tmp, res = two_ranks
    want = _check(res, ["case_save_then_next_step"])["next_loss"]
    src = str(tmp / "from2")
    one = ["case_resume_next_step", "case_bf16_equals_bf16_single_process"]  # bf16: the dense model on one rank
    got = _check(run_local(run_cases, 1, "gloo", args=(one, str(tmp), 0, (src,)), env=ENV, timeout_s=600),
                 one)["resumed"][src]
    assert abs(got - want) <= 1e-6 * abs(want), f"next-step loss after 2 -> 1 re-shard {got}, uninterrupted {want}"


@pytest.mark.slow
@pytest.mark.parametrize("src, dst, parallel, zero", [(2, 4, Parallel.fsep, 0), (4, 2, Parallel.fsep, 0),
                                                      (1, 2, Parallel.fsep, 0), (4, 2, Parallel.deepspeed_ep, 0),
                                                      (2, 4, Parallel.fsep, 2)])
def test_resume_on_another_rank_count(tmp_path, src, dst, parallel, zero):
    """FSEP (Shard(1) of the flat experts) and DeepSpeed-MoE (Shard(0)) checkpoints re-shard through DCP; ZeRO-2's
    partitioned dense optimizer state is saved per parameter in full, so it re-partitions on M ranks."""
    saved = _check(run_local(run_cases, src, "gloo", args=(["case_save_then_next_step"], str(tmp_path), 0, (),
                                                           parallel, zero), env=ENV, timeout_s=900),
                   ["case_save_then_next_step"])
    path = str(tmp_path / f"from{src}")
    got = _check(run_local(run_cases, dst, "gloo", args=(["case_resume_next_step"], str(tmp_path), 0, (path,),
                                                         parallel, zero), env=ENV, timeout_s=900),
                 ["case_resume_next_step"])["resumed"][path]
    assert abs(got - saved["next_loss"]) <= 1e-6 * abs(saved["next_loss"])


@pytest.mark.slow
def test_twenty_steps_equal_single_process(tmp_path):
    cases = ["case_fsep_planner_equals_single_process", "case_ep_equals_single_process",
             "case_deepspeed_moe_equals_single_process"]
    ctx = _check(run_local(run_cases, 2, "gloo", args=(cases, str(tmp_path), 20), env=ENV, timeout_s=1800), cases)
    assert ctx["layout_changes"] >= 10, f"the layout changed only {ctx['layout_changes']} times in 20 steps"
