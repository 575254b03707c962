"""The FSEP runtime (memory lifecycle, communication schedule, layout capture, bf16) on a model of several FSEP
layers against the single-process model, on gloo with 2 processes (default suite) and 4 (slow).

All cases of one world size run inside one spawned process group (start-up dominates on 2 cores)."""

from __future__ import annotations

import pytest

from tests.training.distributed import case_checker
from tests.training.fsep_runtime_cases import CASES, all_cases

check = case_checker(all_cases, timeout_s=600)


@pytest.mark.parametrize("case", sorted(CASES))
def test_runtime_case(case):
    check(case, 2)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_runtime_case_4_ranks(case):
    check(case, 4)
