"""Quota evaluation of explicit routings, and the two planner experiments composed and run tiny."""

from __future__ import annotations

import csv
import json

import numpy as np
from hydra import compose, initialize_config_dir

from common.datapaths import REPO_ROOT
from training.planner import make_planner
from training.planner.evaluate import evaluate, quota_routing


def test_quota_routing_reproduces_and_conserves():
    rng = np.random.default_rng(0)
    loads = rng.integers(0, 100, (4, 4))
    loads[:, 1] += 400
    planner = make_planner("laer_plus", 4, 2, 2)
    plan = planner.plan(loads)
    np.testing.assert_array_equal(quota_routing(plan, loads, 2), plan.routing)
    new = rng.integers(0, 100, (4, 4))
    r = quota_routing(plan, new, 2)
    np.testing.assert_array_equal(r.sum(2), new)
    holders = plan.layout.holders()
    assert not np.any((r > 0) & (holders[None] == 0))
    tokens, est = evaluate(plan, new, 2, planner.objective)
    np.testing.assert_array_equal(tokens, r.sum((0, 1)))
    assert est > 0


def _compose(overrides):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_planner_quality_runs_tiny(tmp_path):
    from experiments.run import run

    rng = np.random.default_rng(0)
    counts = rng.multinomial(64, np.ones(8) / 8, size=(6, 4, 2, 4)).astype(np.uint16)  # [I, R, L, M, E]
    np.savez(tmp_path / "trace.npz", counts=counts, iterations=np.arange(6, dtype=np.int32) * 10)
    cfg = _compose([
        "experiment=laer/planner_quality", f"paths.data_dir={tmp_path}", "planner_quality.expert_trace=trace.npz",
        "planner_quality.devices_per_node=2", "planner_quality.slots=[2,4]", "planner_quality.iteration_stride=3",
        "planner_quality.layer_stride=2", "planner_quality.milp_instances=1", "planner_quality.milp_time_limit_s=5",
        "planner_quality.milp_devices=2", "planner_quality.milp_devices_per_node=1", "planner_quality.milp_experts=4",
        "planner_quality.scale_devices=[8]", "planner_quality.scale_instances=2", "planner_quality.zipf_experts=[8]",
    ])
    out = run(cfg, tmp_path / "out")
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    algs = {(r["algorithm"], r["C"]) for r in rows}
    assert ("static_ep", "2") in algs and ("static_ep", "4") not in algs  # E = N*C only at C = 2
    assert ("laer_plus", "4") in algs
    milp = list(csv.DictReader(open(tmp_path / "out" / "milp_summary.csv")))
    assert {r["algorithm"] for r in milp} >= {"milp", "laer", "laer_plus"}
    assert all(float(r["mean_over_milp"]) >= 1 - 1e-6 for r in milp)
    for r in rows:
        assert float(r["mean_max_over_bound"]) >= 1 - 1e-9
    assert (tmp_path / "out" / "quality.png").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["quality"] == out["summary"]


def test_planner_speed_runs_tiny(tmp_path):
    from experiments.run import run

    (tmp_path / "paper.csv").write_text("n_device,C_e,time\n8,1,0.001\n8,2,0.002\n")
    cfg = _compose([
        "experiment=laer/planner_speed", f"paths.data_dir={tmp_path}", "planner_speed.paper_results=paper.csv",
        "planner_speed.devices=[8]", "planner_speed.slots=[1,2]", "planner_speed.num_experts=8",
        "planner_speed.devices_per_node=4", "planner_speed.repeats=1",
    ])
    out = run(cfg, tmp_path / "out")
    assert {(r["algorithm"], r["C"]) for r in out["rows"]} == {(a, c) for a in ("laer", "laer_plus") for c in (1, 2)}
    assert all(r["paper_s"] > 0 and r["ours_s"] > 0 for r in out["rows"])
    assert (tmp_path / "out" / "speed.png").stat().st_size > 0
