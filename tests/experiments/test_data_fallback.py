"""A fresh machine: quickstart with no data directory and no network completes on synthetic stand-ins and says so;
and an explicit paths.data_dir beats $LOADWISE_DATA_DIR on the command line."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
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
    assert cfg.paths.fallback is None  # the default: quickstart's own choice
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


def test_paths_data_dir_beats_the_environment_on_the_command_line(tmp_path):
    data = synthetic.write_synthetic_data_dir(tmp_path / "data", seed=2)
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env |= {ENV_VAR: "/nonexistent", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "experiments.run", "experiment=quickstart", f"paths.data_dir={data}",
         "paths.fallback=none", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    log = (tmp_path / "run" / "run.log").read_text()
    assert f"data: real files from {data} (set by paths.data_dir)" in log
