"""The command line a researcher types: a -m sweep, and a clean one-line error on bad input."""

import os
import subprocess
import sys
from pathlib import Path

from common import synthetic
from common.datapaths import ENV_VAR

ROOT = Path(__file__).resolve().parents[2]


def _cli(args, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, "HYDRA_FULL_ERROR")}
    return subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=tmp_path, env=env | {"PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)


def test_sweep_runs_every_point(tmp_path):
    data = synthetic.write_synthetic_data_dir(tmp_path / "data", seed=2)
    out = _cli(["-m", "experiment=quickstart", f"paths.data_dir={data}", "quickstart.interval_s=30,60",
                f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    for job in ("0", "1"):
        assert (tmp_path / "sweep" / job / "request_type_rates.csv").exists()
    rates30 = (tmp_path / "sweep" / "0" / "request_type_rates.csv").read_text().count("\n")
    rates60 = (tmp_path / "sweep" / "1" / "request_type_rates.csv").read_text().count("\n")
    assert rates30 > rates60  # finer bins, more rows: each point really got its own value


def test_missing_data_is_one_clear_line(tmp_path):
    out = _cli([f"paths.data_dir={tmp_path / 'nowhere'}", "paths.fallback=none", f"hydra.run.dir={tmp_path / 'run'}"],
               tmp_path)
    assert out.returncode == 1
    assert "error:" in out.stderr and "nowhere" in out.stderr and "make data" in out.stderr
    assert "Traceback" not in out.stderr
