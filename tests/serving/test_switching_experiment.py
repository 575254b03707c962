"""experiment=oserve/switch_cost composes and runs tiny: a table, its CSV and PNG, every switch far below a reload."""

import csv

from hydra import compose, initialize_config_dir

import experiments.run  # noqa: F401  (registers the schemas)
from common.datapaths import REPO_ROOT
from experiments.run import run


def test_switch_cost_runs_tiny(tmp_path, capsys):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[
            "experiment=oserve/switch_cost", "switch_cost.inflight_per_replica=4",
            "switch_cost.cases=[{current:[[4,1]],target:[[2,1],[2,1]]},{current:[[8,1]],target:[[8,1],[8,1]]}]"])
    res = run(cfg, tmp_path)
    assert (tmp_path / "results.json").exists() and (tmp_path / "switch_cost.png").exists()
    rows = list(csv.DictReader(open(tmp_path / "switch_cost.csv")))
    assert [r["switch"] for r in rows] == ["1xtp4pp1 -> 2xtp2pp1", "1xtp8pp1 -> 2xtp8pp1"]
    assert rows[1]["kept"] == "1" and float(rows[1]["in_place_gb"]) == 0.0 and float(rows[1]["inter_node_gb"]) > 0
    assert "Switch cost (llama2-70b on h100_80g_4x8" in capsys.readouterr().out
    assert res["max_total_s"] < res["min_cold_reload_s"]
