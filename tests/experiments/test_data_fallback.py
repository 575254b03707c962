"""A fresh machine: quickstart with no data directory and no network completes on synthetic stand-ins and says so.
(That an explicit paths.data_dir beats $LOADWISE_DATA_DIR on the command line is in test_cli.py.)"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra import compose, initialize_config_dir

import experiments.run  # registers the structured schema
from common import datasets, synthetic
from common.datapaths import ENV_VAR
from tests.common import mirror

ROOT = Path(__file__).resolve().parents[2]


def _compose(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def test_quickstart_without_data_or_network_runs_synthetic(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(datasets, "GITHUB_RAW", mirror.closed_port_url())  # offline: nothing answers
    empty = tmp_path / "data"
    empty.mkdir()
    cfg = _compose(["experiment=quickstart", f"paths.data_dir={empty}"])
    assert cfg.paths.fallback.value == "synthetic"  # conf/experiment/quickstart.yaml's choice
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        result = experiments.run.run(cfg, out)
    assert result["data_source"] == "synthetic"
    files = result["data"]["files"]
    assert {n: f["source"] for n, f in files.items()} == {
        synthetic.EXPERT_NPZ: "synthetic", synthetic.AZURE_CONV: "synthetic"}
    assert all(Path(f["path"]).is_relative_to(out / "synthetic_data") for f in files.values())
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("THIS RUN USES SYNTHETIC DATA" in w and synthetic.EXPERT_NPZ in w for w in warnings)
    assert result["num_iterations"] == synthetic.SMARTMOE_LIKE.num_iterations
    assert (out / "expert_load_imbalance.csv").is_file() and (out / "quickstart.png").is_file()
    assert not any(empty.iterdir())  # nothing made up (or half-fetched) lands in the data directory


def test_quickstart_on_present_files_says_real(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "GITHUB_RAW", mirror.closed_port_url())
    data = synthetic.write_synthetic_data_dir(tmp_path / "data", seed=1)
    result = experiments.run.run(_compose(["experiment=quickstart", f"paths.data_dir={data}"]), tmp_path / "out")
    assert result["data_source"] == "real" and result["data"]["data_dir"] == str(data)
    assert not (tmp_path / "out" / "synthetic_data").exists()
