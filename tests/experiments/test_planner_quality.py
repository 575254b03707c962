"""planner_quality: the cluster config sets the device shape, results are written as each C finishes, logs say where."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import experiments.run  # noqa: F401  (registers the schemas)
from common.datapaths import REPO_ROOT
from experiments.planner_quality import cluster_shape


def _compose(overrides):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=["experiment=laer/planner_quality"] + overrides)


@pytest.fixture
def tiny(tmp_path):
    rng = np.random.default_rng(0)
    counts = rng.multinomial(64, np.ones(8) / 8, size=(6, 4, 2, 4)).astype(np.uint16)  # [I, R=4, L, M, E=8]
    np.savez(tmp_path / "trace.npz", counts=counts, iterations=np.arange(6, dtype=np.int32) * 10)
    return [f"paths.data_dir={tmp_path}", "planner_quality.expert_trace=trace.npz", "planner_quality.iteration_stride=3",
            "planner_quality.layer_stride=2", "planner_quality.milp_instances=0", "planner_quality.algorithms=[laer]",
            "planner_quality.scale_devices=[]"]


def test_cluster_keys_set_the_shape():
    assert cluster_shape(_compose([]), 16) == (16, 8)  # no cluster override: the trace's ranks, devices_per_node 8
    assert cluster_shape(_compose(["cluster.devices_per_node=4"]), 16) == (16, 4)  # cluster beats the section
    assert cluster_shape(_compose(["cluster.num_nodes=4", "cluster.devices_per_node=4"]), 16) == (16, 4)
    assert cluster_shape(_compose(["cluster.num_nodes=1"]), 16) == (8, 8)  # one node of 8: ranks merged 16 -> 8
    with pytest.raises(ValueError, match="cluster.num_nodes'=4 x 'planner_quality.devices_per_node'=8 = 32"):
        cluster_shape(_compose(["cluster.num_nodes=4"]), 16)


def test_merged_cluster_runs_on_fewer_devices(tmp_path, tiny, caplog):
    from experiments.run import run

    # The trace's 4 ranks replayed merged on 1 node of 2 devices; C = 4 fills exactly the 8 experts' 2 x 4 slots,
    # which 4 devices would not (static_ep needs N*C = E).
    cfg = _compose(tiny + ["cluster.num_nodes=1", "cluster.devices_per_node=2", "planner_quality.slots=[4]",
                           "planner_quality.algorithms=[static_ep]"])
    with caplog.at_level(logging.INFO):
        run(cfg, tmp_path / "out")
    rows = list(csv.DictReader(open(tmp_path / "out" / "rows.csv")))
    assert rows and {(r["algorithm"], r["C"]) for r in rows} == {("static_ep", "4")}
    assert "on 2 devices (2 per node)" in caplog.text


def test_results_written_per_c_and_logged(tmp_path, tiny, caplog):
    from experiments.run import run

    out = tmp_path / "out"
    # C = 1 gives 4 slots for 8 experts: planning fails after C = 2 has finished.
    cfg = _compose(tiny + ["planner_quality.devices_per_node=2", "planner_quality.slots=[2,1]"])
    with caplog.at_level(logging.INFO), pytest.raises(ValueError):
        run(cfg, out)
    rows = list(csv.DictReader(open(out / "rows.csv")))
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert rows and {r["C"] for r in rows} == {"2"} and {r["C"] for r in summary} == {"2"}
    assert str(out) in caplog.text and "C=2 done" in caplog.text


def test_wins_ties_losses_against_laer():
    from experiments.planner_quality import summarise, wins_ties_losses

    def row(alg, k, est, routing="fsep"):
        return {"setting": "zipf", "N": 32, "E": 64, "C": 2, "instance": k, "iteration": -1, "microbatch": k,
                "layer": -1, "algorithm": alg, "mode": "lagged", "routing": routing, "quotas": False,
                "max_over_mean": 1.0, "max_over_bound": 1.0, "est_time_s": est, "solve_s": 0.0, "gap": ""}

    # laer 1.0 everywhere; x: 0.99 (win), 1.004 (tie within 0.5%), 0.996 (tie), 1.01 (loss); under quotas: a win.
    rows = [row("laer", k, 1.0) for k in range(4)] + [row("x", k, v) for k, v in enumerate([0.99, 1.004, 0.996, 1.01])]
    rows += [row("laer", 0, 2.0, "quotas"), row("x", 0, 1.0, "quotas")]
    summary = {(s["algorithm"], s["routing"]): s for s in summarise(rows, 0.005)}
    s = summary[("x", "fsep")]
    assert (s["wins"], s["ties"], s["losses"]) == (1, 2, 1) and s["worst_over_laer"] == pytest.approx(1.01)
    assert (summary[("laer", "fsep")]["ties"], summary[("x", "quotas")]["wins"]) == (4, 1)
    assert wins_ties_losses(list(summary.values())) == {"x": [2, 2, 1]}
