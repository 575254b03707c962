"""Engine profiling into the cost model's table (fast, over an in-process fake replica), and the context fit."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest

from common.topology import local_cpu
from serving.costmodel import ModelSpec, ReplicaConfig, load_perf_table
from serving.costmodel.measured import fit_decode_context
from serving.engines.profile import (
    ProfileGrid,
    engine_cluster,
    grid_points,
    profile_cost_model,
    profile_replica,
    write_perf_table,
)
from tests.serving.router_fakes import FakeReplica

TINY = ModelSpec("tiny", 2, 64, 128, 2, 2, 512, gated_mlp=True, bytes_per_param=4, context_len=512)


def test_context_fit_recovers_the_slope_of_a_known_step_time():
    rng = np.random.default_rng(0)
    batch = np.repeat([1, 4, 16], 4)
    ctx = batch * rng.uniform(10, 300, batch.size)
    a = {1: 2e-3, 4: 3e-3, 16: 6e-3}
    step = np.array([a[b] for b in batch]) + 7e-7 * ctx
    assert fit_decode_context(batch, ctx, step) == pytest.approx(7e-7, rel=1e-6)


class ConfigReplica(FakeReplica):
    class config:  # noqa: N801 - stands in for a ReplicaConfig
        tp = 1


def test_profile_of_a_fake_engine_loads_as_a_cost_model(tmp_path):
    """A fake whose every step takes 5 ms: the profiled decode step is ~5 ms at every batch, prefill one step."""
    rep = ConfigReplica("r0", step_s=0.005)
    grid = ProfileGrid(prefill_prompts=[8, 64], decode_batches=[1, 4], decode_prompts=[16, 64], output_tokens=4,
                       repeats=1)
    assert grid_points(grid, 512) == [(8, 1), (64, 1), (16, 1), (16, 4), (64, 4)]
    rows = asyncio.run(profile_replica(rep, grid, TINY.name, "cpu-test", 512))
    assert [(r.prompt_size, r.batch_size) for r in rows] == grid_points(grid, 512)
    table = load_perf_table(write_perf_table(rows, tmp_path / "profile.csv"), fit_context=True)
    base = local_cpu()
    cluster = engine_cluster(2, 2**30, TINY, replace(base, device=replace(base.device, name="cpu-test")))
    cost = profile_cost_model(table, TINY, cluster, max_num_seqs=32, max_batched_tokens=2048,
                              max_model_len=512).cost(ReplicaConfig(1))
    assert cost.decode_time(4, 4 * 40) == pytest.approx(0.005, rel=0.6)
    assert cost.max_num_seqs == 32
    # The KV capacity is the engine's space (1 GiB) over K and V of one token (2 layers x 64 x 4 bytes x 2).
    assert cost.kv_capacity_tokens == pytest.approx(2**30 / TINY.kv_bytes_per_token, rel=0.01)
