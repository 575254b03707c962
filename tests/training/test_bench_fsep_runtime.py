"""The FSEP runtime benchmark's pure parts, and one tiny end-to-end run (2 gloo ranks) whose memory rows show the
claim: restored experts flat in the layer count when freed, L layers' worth when kept."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from common.datapaths import REPO_ROOT
from experiments.bench_fsep_runtime import ablation_table, read_paper_ablation


def _time_rows(on_ms, off_ms):
    return [{"part": "time", "mode": m, "comm_opt": c, "wall_ms": w, "cpu_ms": w / 2, "thread_cpu_ms": w / 4}
            for m in ("free", "keep") for c, w in ((True, on_ms), (False, off_ms))]


def test_ablation_table_costs_and_paper(tmp_path):
    path = tmp_path / "ablation.csv"
    path.write_text("method,avg_time_ms\nFSDP,35661.15\nLAER,26325.37\nno_comm_opt,28592.11\n")
    paper = read_paper_ablation(path)
    table = ablation_table(_time_rows(100.0, 110.0), paper)
    assert [a["mode"] for a in table] == ["free", "keep"]
    for a in table:
        assert a["no_comm_opt_cost_wall_pct"] == pytest.approx(10.0)
        assert a["no_comm_opt_cost_cpu_pct"] == pytest.approx(10.0)
        assert a["paper_no_comm_opt_cost_pct"] == pytest.approx(8.61, abs=0.01)
    assert ablation_table(_time_rows(100.0, 90.0), None)[0]["paper_no_comm_opt_cost_pct"] is None


def test_paper_ablation_bad_columns_name_the_file(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("name,ms\nLAER,1\n")
    with pytest.raises(ValueError, match="bad.csv"):
        read_paper_ablation(path)


def test_bench_end_to_end_tiny(tmp_path):
    from experiments.run import run

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "experiment=laer/bench_fsep_runtime", "bench_fsep_runtime.hidden=32", "bench_fsep_runtime.ffn=48",
            "bench_fsep_runtime.experts=4", "bench_fsep_runtime.slots=2", "bench_fsep_runtime.batch=1",
            "bench_fsep_runtime.seq_len=8", "bench_fsep_runtime.layers=[1,3]", "bench_fsep_runtime.time_layers=2",
            "bench_fsep_runtime.reps=1", "bench_fsep_runtime.warmup=0"])
    out = tmp_path / "out"
    run(cfg, out)
    saved = json.loads((out / "results.json").read_text())["results"]
    mem = {(r["mode"], r["layers"]): r for r in saved["rows"] if r["part"] == "memory"}
    assert mem["free", 3]["restored_peak_layers"] <= 2.0 < mem["keep", 3]["restored_peak_layers"] == 3.0
    assert mem["free", 1]["activations_mib"] == mem["keep", 1]["activations_mib"] > 0
    assert len([r for r in saved["rows"] if r["part"] == "time"]) == 4 and len(saved["ablation"]) == 2
    assert (out / "bench_fsep_runtime.csv").stat().st_size > 0 and (out / "bench_fsep_runtime.png").stat().st_size > 0
