"""experiment=laer/fig10 composes and runs tiny, writes its files and a headline, leaves the paper columns empty
(with one warning per missing file) rather than inventing numbers; its arithmetic on hand-computed cases; and
experiment=laer/fig11 composes at the paper's grid with a headline over planner_speed's rows."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import experiments.run  # noqa: F401  (registers the schemas)
from common.datapaths import REPO_ROOT
from common.synthetic import EXPERT_NPZ, synthetic_expert_trace, write_expert_npz
from experiments.laer_fig10 import alltoall_terms, breakdown_rows, token_rows, token_units
from experiments.laer_paper import PaperRun
from experiments.planner_speed import headline as speed_headline
from training.sim import Breakdown, SimResult, SystemName

BREAKDOWN = "laer_moe_paper_results/breakdown_analysis_backup.csv"
TOKENS = "laer_moe_paper_results/token_analysis_backup.csv"


def _compose(name, overrides):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[f"experiment={name}"] + overrides)


@pytest.fixture
def data_dir(tmp_path):
    """A data directory with a small synthetic trace and, for FSDP on the e8k2 model only, paper CSVs."""
    root = tmp_path / "data"
    write_expert_npz(synthetic_expert_trace(seed=1), root / EXPERT_NPZ)
    (root / BREAKDOWN).parent.mkdir(parents=True)
    with open(root / BREAKDOWN, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "model_name", "method", "alltoall_time", "expert_time", "total_time"])
        w.writerows([r, "mixtral-8x7b-e8k2", "FSDP", 10.0 + r % 3, 12.0, 35.0] for r in range(32))
    with open(root / TOKENS, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "method", "model_name", "layer", "iter", "token_num"])
        w.writerows([r, "FSDP", "mixtral-8x7b-e8k2", la, 0, 32768 + (1000 if r == 0 else -1000 if r == 1 else 0)]
                    for la in range(32) for r in range(32))
    return root


def _run(tmp_path, data_dir, extra=()):
    from experiments.run import run

    cfg = _compose("laer/fig10", [f"paths.data_dir={data_dir}", "paths.fallback=none", "fig10.samples=1",
                                  "fig10.models=[mixtral-8x7b-e8k2]", "fig10.systems=[fsdp_ep,laer]", *extra])
    out = tmp_path / "out"
    return run(cfg, out), out


def test_tiny_run_writes_tables_plots_and_headline(tmp_path, data_dir):
    results, out = _run(tmp_path, data_dir)
    for name in ("breakdown.csv", "breakdown_summary.csv", "tokens.csv", "tokens_summary.csv", "fig10a.png",
                 "fig10b.png", "results.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "results.json").read_text())["results"]["headline"]
    rows = {(r["system"], r["quantity"]): r for r in results["breakdown"]}
    # The paper's FSDP ranks: all-to-all 10, 11, 12, ... -> mean of 32 ranks; LAER has no paper rows: empty.
    assert rows[("fsdp_ep", "alltoall")]["paper_mean"] == pytest.approx(np.mean([10.0 + r % 3 for r in range(32)]))
    assert rows[("laer", "alltoall")]["paper_mean"] is None and rows[("laer", "alltoall")]["error_of_mean"] is None
    tokens = {r["system"]: r for r in results["tokens"]}
    assert tokens["fsdp_ep"]["paper_max_over_mean"] == pytest.approx(33768 / 32768)
    assert tokens["laer"]["paper_max_over_mean"] is None
    assert results["paper_token_unit"] == ["routes per micro-batch", "tokens per iteration"]  # k = 2: ambiguous
    for h in results["headline"]:
        assert set(h) == {"figure", "setting", "metric", "ours", "paper", "error"}
        assert h["ours"] > 0
        if h["paper"] is not None:
            assert h["error"] == pytest.approx((h["ours"] - h["paper"]) / h["paper"])


def test_missing_paper_files_leave_empty_columns_with_one_warning_each(tmp_path, data_dir, caplog):
    (data_dir / BREAKDOWN).unlink()
    (data_dir / TOKENS).unlink()
    with caplog.at_level(logging.WARNING):
        results, _ = _run(tmp_path, data_dir)
    for name in (BREAKDOWN, TOKENS):
        assert sum(name in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING) == 1
    assert all(r["paper_mean"] is None for r in results["breakdown"])
    assert all(h["paper"] is None and h["error"] is None for h in results["headline"])


@pytest.mark.parametrize("override, key", [("fig10.models=[nope]", "fig10.models"),
                                           ("fig10.systems=[nope]", "fig10.systems"),
                                           ("fig10.samples=0", "fig10.samples")])
def test_bad_config_names_the_key(tmp_path, data_dir, override, key):
    with pytest.raises(ValueError, match=key):
        _run(tmp_path, data_dir, [override])


def test_breakdown_arithmetic_by_hand():
    ours = {"alltoall": np.array([1.0, 3.0]), "expert": np.array([2.0, 2.0]), "total": np.array([5.0, 5.0])}
    paper = [(0, 2.0, 1.0, 4.0), (1, 2.0, 4.0, 4.0)]
    rows, summary = breakdown_rows("m", "s", ours, paper)
    by = {r["quantity"]: r for r in summary}
    # all-to-all: means 2 vs 2 (error 0), rank errors -50% and +50%.
    assert by["alltoall"]["error_of_mean"] == 0.0 and by["alltoall"]["mean_abs_rank_error"] == 0.5
    # expert: means 2 vs 2.5 (-20%), rank errors +100% and -50%.
    assert by["expert"]["error_of_mean"] == pytest.approx(-0.2)
    assert by["expert"]["mean_abs_rank_error"] == pytest.approx(0.75)
    assert by["total"]["error_of_mean"] == pytest.approx(0.25)
    assert (by["alltoall"]["ours_min"], by["alltoall"]["ours_max"]) == (1.0, 3.0)
    assert rows[1]["expert_error"] == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="ranks"):
        breakdown_rows("m", "s", ours, paper[:1])


def test_token_arithmetic_by_hand():
    ours_max = np.array([[3, 6]])  # one sample, two layers; 2 routes per device on average
    paper = np.array([[[1, 3], [2, 2]], [[2, 2], [4, 0]]])  # [I=2, L=2, N=2]
    rows, summary = token_rows("m", "s", ours_max, 2.0, paper)
    # Layer 0: ours 3/2 = 1.5; paper max/mean 3/2 and 2/2 -> 1.25; error +20%. Layer 1: ours 3, paper (1 + 2) / 2.
    assert rows[0]["ours_max_over_mean"] == 1.5 and rows[0]["paper_max_over_mean"] == 1.25
    assert rows[0]["max_over_mean_error"] == pytest.approx(0.2)
    assert rows[1]["paper_max_over_mean"] == 1.5 and rows[1]["paper_max"] == 3.0
    assert summary["ours_max_over_mean"] == 2.25 and summary["paper_max_over_mean"] == 1.375
    assert summary["ours_worst_layer"] == 3.0 and summary["paper_worst_layer"] == 1.5


def test_token_units_from_the_setup():
    run = PaperRun()  # 128 x 8192 tokens, 2 micro-batches: 16,384 tokens per device per micro-batch on 32 devices
    k2 = np.full((1, 1, 32), 32768)  # sums to 2^20: routes of a micro-batch at k = 2, or tokens of an iteration
    k4 = np.full((1, 1, 32), 65536)  # sums to 2^21: routes of a micro-batch at k = 4 only
    assert token_units(k2, 2, run) == {"routes per micro-batch", "tokens per iteration"}
    assert token_units(k4, 4, run) == {"routes per micro-batch"}
    assert token_units(k2, 4, run) == {"tokens per iteration"}
    assert token_units(k2 + 1, 2, run) == set()


def test_fig11_composes_at_the_papers_grid():
    cfg = _compose("laer/fig11", [])
    sc = cfg.planner_speed
    assert cfg.task == "planner_speed" and sc.num_experts == 32 and sc.repeats == 10
    assert list(sc.devices) == [64, 128, 256, 512, 1024] and list(sc.slots) == [1, 2, 4, 8, 16]


def test_fig11_headline_takes_the_smallest_and_largest_paper_point():
    def row(n, c, cpu, paper):
        return {"algorithm": "laer", "N": n, "C": c, "cpu_s": cpu, "paper_s": paper}

    rows = [row(128, 2, 0.5, 1.0), row(64, 1, 0.2, 0.1), row(1024, 16, 3.0, 2.0), row(2048, 16, 9.0, "")]
    (small, large) = speed_headline(rows)
    assert (small["setting"], small["ours"], small["error"]) == ("laer, N=64, C=1", 0.2, pytest.approx(1.0))
    assert (large["setting"], large["error"]) == ("laer, N=1024, C=16", pytest.approx(0.5))
    assert len(speed_headline(rows[1:2])) == 1


def test_alltoall_terms_split_wait_from_rest():
    """Ours: the wait is the busiest device's expert time (summed per layer) minus a rank's own; the rest is what
    is left of its all-to-all. The paper's wait comes from its token counts: busiest over mean routes, minus 1, times
    its mean expert seconds."""
    zero = dict(attention=0.0, alltoall=0.0, param_comm=0.0, exposed=0.0, total=0.0)
    layers = (Breakdown(expert=3.0, **zero), Breakdown(expert=5.0, **zero))  # busiest device per layer, 1 micro-batch
    # Two devices, 2 micro-batches: busiest expert time 2 * (3 + 5) = 16 s; own expert 12 and 8 (mean 10), so
    # the mean wait is 6; mean all-to-all 9, rest 3.
    result = SimResult(SystemName.laer, layers, np.array([1, 1]), 0.0, 2, np.array([12.0, 8.0]),
                       np.array([7.0, 11.0]))
    # Paper: 2 ranks, one iteration, 2 layers: routes (3, 1) and (2, 2): busiest 3 + 2 = 5 over mean 2 + 2 = 4.
    tokens = np.array([[[3, 1], [2, 2]]])
    paper = [(0, 6.0, 9.0, 30.0), (1, 8.0, 11.0, 30.0)]  # mean all-to-all 7, mean expert 10
    t = alltoall_terms("m", "laer", [result], paper, tokens)
    assert (t["ours_alltoall_s"], t["ours_wait_s"], t["ours_rest_s"]) == pytest.approx((9.0, 6.0, 3.0))
    assert t["ours_imbalance"] == pytest.approx(1.6)
    assert t["paper_imbalance"] == pytest.approx(1.25)
    assert (t["paper_alltoall_s"], t["paper_wait_s"], t["paper_rest_s"]) == pytest.approx((7.0, 2.5, 4.5))
    assert alltoall_terms("m", "laer", [result], None, None)["paper_wait_s"] is None
