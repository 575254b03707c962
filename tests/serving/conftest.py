"""Serving test helpers: the real data directory (skip with the reason when absent) and synthetic request traces."""

from pathlib import Path

import numpy as np
import pytest

from common.synthetic import write_azure_csv as _write_azure


@pytest.fixture
def real_data(data_path) -> Path:
    """The real data directory, skipping when the Splitwise table or the Azure traces are absent."""
    data_path("splitwise_sim_perf_model/perf_model.csv")
    return data_path("azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv").parents[1]


def synthetic_requests(n=400, rate=4.0, seed=0):
    """Two request populations (short chat-like, long code-like), Poisson arrivals from 0."""
    rng = np.random.default_rng(seed)
    long = rng.random(n) < 0.3
    inp = np.where(long, rng.integers(1500, 4000, n), rng.integers(50, 400, n))
    out = np.where(long, rng.integers(100, 400, n), rng.integers(5, 60, n))
    arr = np.round(np.cumsum(rng.exponential(1 / rate, n)), 6)
    return arr - arr[0], inp.astype(np.int64), out.astype(np.int64)


def write_azure_csv(path: Path, arrival_s, inp, out) -> Path:
    from common.traces import RequestTrace

    return _write_azure(RequestTrace(arrival_s, inp, out, "synthetic"), path)
