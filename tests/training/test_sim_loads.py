"""training.sim's trace rescaling and calibration inputs."""

from pathlib import Path

import numpy as np
import pytest

from common.costmodel import ComputeModel
from common.topology import a100_80g_4x8
from common.traces import ExpertLoadTrace
from training.sim import default_compute, profile_compute, trace_loads

PROFILE = Path(__file__).parents[2] / "common" / "profiles" / "local_cpu.json"


def small_trace() -> ExpertLoadTrace:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=(2, 4, 3, 2, 8))  # [I, R, L_t, M, E_t]
    counts[..., 0] += 100  # a hot expert
    return ExpertLoadTrace(counts, np.arange(2), "synthetic")


def test_rows_hold_tokens_times_k_and_keep_proportions():
    tr = small_trace()
    for n, e in ((2, 4), (8, 16), (4, 8)):
        loads = trace_loads(tr, n, 6, e, 2, 1000, iteration=1, microbatch=1)
        assert loads.shape == (6, n, e)
        assert (loads.sum(-1) == 2000).all()
    loads = trace_loads(tr, 4, 3, 8, 2, 1000)
    src = tr.counts[0, :, :, 0].transpose(1, 0, 2)  # [L, R, E]
    # Largest remainder: every count is within one route of its exact share.
    assert np.abs(loads - src * 2000 / src.sum(-1, keepdims=True)).max() < 1
    merged = trace_loads(tr, 2, 3, 4, 1, 500)
    grouped = src.reshape(3, 2, 2, 4, 2).sum((2, 4))  # ranks 2 -> 1, experts 2 -> 1
    assert np.abs(merged - grouped * 500 / grouped.sum(-1, keepdims=True)).max() < 1


def test_bad_shapes_name_the_argument():
    tr = small_trace()
    with pytest.raises(ValueError, match="num_devices=3"):
        trace_loads(tr, 3, 3, 8, 2, 10)
    with pytest.raises(ValueError, match="num_experts=3"):
        trace_loads(tr, 4, 3, 3, 2, 10)
    with pytest.raises(ValueError, match="iteration 5"):
        trace_loads(tr, 4, 3, 8, 2, 10, iteration=5)


def test_profile_efficiency_moves_onto_the_target_peak():
    cluster = a100_80g_4x8()
    cpu = ComputeModel.from_profile(PROFILE)
    gpu = profile_compute(PROFILE, cluster)
    for flops in (1e6, 1e9, 1e12):
        assert gpu.achieved(flops) / gpu.peak_flops == pytest.approx(cpu.achieved(flops) / cpu.peak_flops)
    assert default_compute(cluster).achieved(1e12) == pytest.approx(0.6 * 312e12)
    with pytest.raises(ValueError, match="efficiency"):
        default_compute(cluster, 1.5)
