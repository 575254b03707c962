"""experiment=oserve/serve's scheduler path: a plan from serving.scheduler on the trace slice, with an engine
profile as the cost model (fast: no engine is started)."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from common import synthetic
from common.topology import local_cpu
from common.traces import load_request_trace
from experiments.config import PlanSource, ServeConfig
from experiments.oserve_serve import plan_from_scheduler
from serving.engines.config import EngineConfig
from serving.engines.profile import ProfileRow, write_perf_table
from serving.tinymodel import TinyModelSpec, build_tiny_model, default_cache_root


def profile_rows(model: str, hardware: str) -> list[ProfileRow]:
    """A plausible CPU engine: prefill 2 ms + 20 us/token, decode step 3 ms + 0.2 ms per sequence (+ context)."""
    rows = [ProfileRow(model, hardware, p, 1, 16, 2.0 + 0.02 * p, 3.2 + 1e-4 * p, 1) for p in (8, 64, 256)]
    rows += [ProfileRow(model, hardware, p, b, 16, 2.0 + 0.02 * p * b, 3.0 + 0.2 * b + 1e-4 * b * (p + 8), 1)
             for p in (16, 128) for b in (2, 8, 32)]
    return rows


def test_scheduler_plan_covers_every_type_on_the_local_devices(tmp_path):
    model = build_tiny_model(TinyModelSpec(context=512), default_cache_root())
    prof = write_perf_table(profile_rows(model.name, local_cpu().device.name), tmp_path / "profile.csv")
    data = synthetic.write_synthetic_data_dir(tmp_path / "data", seed=0)
    s = OmegaConf.structured(ServeConfig)
    s.plan_source, s.profile_path, s.plan_requests, s.num_devices = PlanSource.scheduler, str(prof), 120, 2
    raw = load_request_trace(data / s.trace_path, s.trace_format)
    engine = EngineConfig(model=str(model), max_model_len=512)
    plan, types = plan_from_scheduler(s, engine, raw)
    assert plan.num_gpus <= 2 and types.num_types == 2
    x = np.array(plan.dispatch)
    assert x.shape == (len(plan.replicas), 2)
    assert np.all(x.sum(axis=0) > 0)  # every request type has somewhere to go


def test_scheduler_path_without_a_profile_names_the_key():
    s = OmegaConf.structured(ServeConfig)
    s.plan_source = PlanSource.scheduler
    with pytest.raises(ValueError, match="serve.profile_path"):
        plan_from_scheduler(s, EngineConfig(model="x"), None)
