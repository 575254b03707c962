"""The FSEP runtime (memory lifecycle, communication schedule, layout capture, bf16) on a model of several FSEP
layers against the single-process model, on gloo with 2 processes (default suite) and 4 (slow).

All cases of one world size run inside one spawned process group (start-up dominates on 2 cores)."""

from __future__ import annotations

import pytest

from tests.training.distributed import run_distributed
from tests.training.fsep_runtime_cases import CASES, all_cases

_RESULTS: dict[int, list] = {}


def check(case, n):
    if n not in _RESULTS:
        _RESULTS[n] = run_distributed(all_cases, n, timeout_s=600)
    errors = [f"rank {r}:\n{res[case]}" for r, res in enumerate(_RESULTS[n]) if res[case]]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("case", sorted(CASES))
def test_runtime_case(case):
    check(case, 2)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_runtime_case_4_ranks(case):
    check(case, 4)
