"""experiment=laer/fig12 composes and runs tiny, writes its files and a headline; the slowdown arithmetic on a
hand case; no_even / no_pq as the laer planner's candidates option (one replica-count candidate each)."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import experiments.run  # noqa: F401  (registers the schemas)
from common.datapaths import REPO_ROOT
from common.synthetic import EXPERT_NPZ, synthetic_expert_trace, write_expert_npz
from experiments.laer_fig12 import ablation_rows
from training.planner import make_planner
from training.planner.lpt import even_replicas, priority_replicas

ABLATION = "laer_moe_paper_results/ablation_analysis_backup.csv"


def _run(tmp_path, extra=(), paper=True):
    from experiments.run import run

    root = tmp_path / "data"
    write_expert_npz(synthetic_expert_trace(seed=2), root / EXPERT_NPZ)
    if paper:
        (root / ABLATION).parent.mkdir(parents=True)
        (root / ABLATION).write_text("method,avg_time_ms\nFSDP,30000\nLAER,20000\n")
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=laer/fig12", f"paths.data_dir={root}",
                                                       "paths.fallback=none", "fig12.samples=1", *extra])
    return run(cfg, tmp_path / "out"), tmp_path / "out"


def test_tiny_run_writes_table_plot_and_headline(tmp_path):
    results, out = _run(tmp_path)
    assert (out / "fig12.png").is_file() and (out / "results.json").is_file()
    rows = {r["variant"]: r for r in csv.DictReader(open(out / "fig12.csv"))}
    assert set(rows) == {"FSDP", "LAER", "no_comm_opt", "serial_comm", "no_even", "no_pq"}
    by = {r["variant"]: r for r in results["rows"]}
    assert by["LAER"]["paper_s"] == 20.0 and by["FSDP"]["slowdown_paper"] == 1.5
    assert by["no_pq"]["paper_s"] is None and by["no_pq"]["slowdown_paper"] is None  # not in the paper file here
    # Serialising the parameter / gradient communication cannot make LAER faster.
    assert by["no_comm_opt"]["ours_s"] >= by["LAER"]["ours_s"]
    # Synchronous communication exposes at least what a one-unit prefetch does.
    assert by["serial_comm"]["ours_s"] >= by["no_comm_opt"]["ours_s"]
    settings = [h["setting"] for h in results["headline"]]
    assert settings[0].startswith("LAER") and len(settings) == 6  # LAER's time, then 5 slowdowns


def test_missing_paper_file_one_warning_and_empty_columns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        results, _ = _run(tmp_path, ["fig12.variants=[LAER,no_pq]"], paper=False)
    assert sum(ABLATION in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING) == 1
    assert [r["variant"] for r in results["rows"]] == ["LAER", "no_pq"]
    assert all(r["paper_s"] is None for r in results["rows"])


def test_bad_config_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="fig12.model"):
        _run(tmp_path, ["fig12.model=nope"])


def test_slowdowns_by_hand():
    rows = {r["variant"]: r for r in ablation_rows({"LAER": 10.0, "FSDP": 15.0}, {"LAER": 20.0, "FSDP": 24.0})}
    assert rows["LAER"]["error"] == -0.5 and rows["LAER"]["slowdown_ours"] == 1.0
    assert rows["FSDP"]["slowdown_ours"] == 1.5 and rows["FSDP"]["slowdown_paper"] == 1.2
    assert rows["FSDP"]["slowdown_error"] == pytest.approx(0.25)
    (only,) = ablation_rows({"FSDP": 15.0}, {})
    assert only["slowdown_ours"] is None and only["paper_s"] is None and only["error"] is None


def test_no_even_and_no_pq_keep_one_candidate_each():
    # 2 nodes x 4 devices, C = 4: 32 slots for 8 experts, one hot. Even: 4 replicas each. The priority queue grows
    # the hot expert (2 nodes: steps of 2), so the two candidates differ and the paper's planner keeps the cheaper.
    rng = np.random.default_rng(0)
    loads = rng.multinomial(400, [0.5] + [0.5 / 7] * 7, size=8)  # [N=8, E=8]
    even, pq = even_replicas(8, 32), priority_replicas(loads.sum(0), 32, 2)
    assert not np.array_equal(even, pq)
    plans = {c: make_planner("laer", 8, 4, 4, candidates=c).plan(loads) for c in ("both", "even", "priority")}
    assert np.array_equal(plans["even"].layout.replica_counts(), even)
    assert np.array_equal(plans["priority"].layout.replica_counts(), pq)
    cheaper = min(("even", "priority"), key=lambda c: plans[c].est_time_s)
    assert plans["even"].est_time_s > 1.2 * plans["priority"].est_time_s  # far apart: no tie for the pick
    assert np.array_equal(plans["both"].layout.slots, plans[cheaper].layout.slots)
    with pytest.raises(ValueError, match="candidates"):
        make_planner("laer", 8, 2, 4, candidates="nope")
    with pytest.raises(ValueError, match="candidates=even"):
        make_planner("laer", 8, 3, 4, candidates="even").plan(np.ones((8, 5), dtype=np.int64))  # 5 !| 24
