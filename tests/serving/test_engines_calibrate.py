"""The real-engine experiments end to end at a tiny size (slow: vLLM replicas on Ray, vLLM's own server):
oserve/calibrate writes a loadable profile and the sim-vs-engine errors; oserve/bench_engines runs its A/B round and
a switch under load that loses nothing. Figures are not asserted (benchmarks report, tests check the mechanism)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common import synthetic
from serving.costmodel import load_perf_table

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def run_experiment(tmp_path, name, *overrides, timeout=900) -> dict:
    data = synthetic.write_synthetic_data_dir(tmp_path / "data", seed=0)
    cmd = [sys.executable, "-m", "experiments.run", f"experiment={name}", f"paths.data_dir={data}",
           f"hydra.run.dir={tmp_path / 'run'}", *overrides]
    p = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, RAY_AUTH_MODE="disabled"), capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    return json.loads((tmp_path / "run" / "results.json").read_text())["results"]


def test_calibrate_writes_a_profile_the_cost_model_loads_and_the_errors(tmp_path):
    res = run_experiment(tmp_path, "oserve/calibrate", "calibrate.loadgen.num_requests=12",
                         "calibrate.warmup_requests=2", "calibrate.profile.prefill_prompts=[8,64]",
                         "calibrate.profile.decode_batches=[1,4]", "calibrate.profile.decode_prompts=[16,64]",
                         "calibrate.profile.repeats=1")
    assert res["answered"] == 12
    assert set(res["errors"]) >= {"p50_ttft_s", "p99_ttft_s", "p50_e2e_s", "p99_e2e_s"}
    run = tmp_path / "run"
    table = load_perf_table(run / "profile.csv", fit_context=True)
    assert len(table.rows) == 5 and json.loads((run / "profile.json").read_text())["limits"]["max_num_seqs"] == 32
    assert (run / "calibrate.png").exists() and (run / "calibrate.csv").exists()


def test_bench_engines_round_and_switch_under_load_lose_nothing(tmp_path):
    res = run_experiment(tmp_path, "oserve/bench_engines", "bench_engines.rounds=1",
                         "bench_engines.loadgen.num_requests=8", "bench_engines.rate_rps=4")
    assert [r["direct"]["answered"] for r in res["per_round"]] == [8]
    assert [r["routed"]["answered"] for r in res["per_round"]] == [8]
    assert res["switch"]["under_load_errors"] == 0 and res["switch"]["under_load_answered"] == 8
    assert (tmp_path / "run" / "rounds.csv").exists()
