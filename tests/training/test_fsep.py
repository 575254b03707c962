"""FSEPMoE and the baselines against the single-process reference, on gloo with 2 and 4 processes (float32)."""

from __future__ import annotations

import pytest
from distributed import run_distributed
from fsep_cases import CASES, all_cases

_RESULTS: dict[int, list] = {}


def results(n):
    if n not in _RESULTS:
        _RESULTS[n] = run_distributed(all_cases, n, timeout_s=240)
    return _RESULTS[n]


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fsep_case(case, n):
    errors = [f"rank {r}:\n{res[case]}" for r, res in enumerate(results(n)) if res[case]]
    assert not errors, "\n".join(errors)
