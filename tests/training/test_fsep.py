"""FSEPMoE and the baselines against the single-process reference, on gloo with 2 and 4 processes (float32).

All cases of one world size run inside one spawned process group (start-up dominates on 2 cores)."""

from __future__ import annotations

import pytest

from tests.training.distributed import run_distributed
from tests.training.fsep_cases import CASES, all_cases, all_cases_larger

_RESULTS: dict[tuple, list] = {}


def results(fn, n):
    if (fn, n) not in _RESULTS:
        _RESULTS[fn, n] = run_distributed(fn, n, timeout_s=300)
    return _RESULTS[fn, n]


def check(fn, case, n):
    errors = [f"rank {r}:\n{res[case]}" for r, res in enumerate(results(fn, n)) if res[case]]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fsep_case(case, n):
    check(all_cases, case, n)


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fsep_case_larger(case, n):
    check(all_cases_larger, case, n)
