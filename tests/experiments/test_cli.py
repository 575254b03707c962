"""The command line a researcher types, through the installed console entry point `loadwise`: the experiment list,
a -m sweep that reports a failed point and goes on, one-line errors that name what the user typed, and the files a
run leaves (results.json, a non-empty run.log)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common import synthetic
from common.datapaths import ENV_VAR
from experiments.run import experiments

LOADWISE = Path(sys.executable).parent / "loadwise"
pytestmark = pytest.mark.skipif(not LOADWISE.exists(), reason=f"console entry point {LOADWISE} not installed (pip install -e .)")


def _cli(args, tmp_path, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, "HYDRA_FULL_ERROR")}
    return subprocess.run([str(LOADWISE), *args], cwd=tmp_path, env=env | (env_extra or {}),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic.write_synthetic_data_dir(tmp_path_factory.mktemp("data"), seed=2)


def test_list_names_every_experiment(tmp_path):
    out = _cli(["--list"], tmp_path)
    assert out.returncode == 0, out.stderr
    listed = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    assert listed == list(experiments())
    assert {"quickstart", "laer/planner_quality", "laer/planner_speed", "oserve/spatial"} <= set(listed)
    assert all(len(line.split(None, 1)) == 2 for line in out.stdout.splitlines())  # each with its line


def test_misspelt_experiment_lists_every_real_one(tmp_path):
    out = _cli(["experiment=laer/planner_qualty"], tmp_path)
    assert out.returncode != 0
    assert "did you mean 'laer/planner_quality'" in out.stderr
    for name in experiments():
        assert name in out.stderr


def test_run_writes_results_json_and_a_log(tmp_path, data):
    out = _cli(["experiment=quickstart", f"paths.data_dir={data}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["task"] == "quickstart" and record["config"]["paths"]["data_dir"] == str(data)
    assert record["results"]["num_requests"] > 0
    log = (tmp_path / "run" / "run.log").read_text()
    assert "Expert load:" in log and f"results in {tmp_path / 'run'}" in log


def test_sweep_runs_every_point(tmp_path, data):
    out = _cli(["-m", "experiment=quickstart", f"paths.data_dir={data}", "quickstart.interval_s=30,60",
                f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    rates30 = (tmp_path / "sweep" / "0" / "request_type_rates.csv").read_text().count("\n")
    rates60 = (tmp_path / "sweep" / "1" / "request_type_rates.csv").read_text().count("\n")
    assert rates30 > rates60  # finer bins, more rows: each point really got its own value


def test_sweep_reports_a_failed_point_and_goes_on(tmp_path, data):
    out = _cli(["-m", "experiment=quickstart", f"paths.data_dir={data}", "quickstart.num_request_types=0,4",
                f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert out.returncode == 1
    assert (tmp_path / "sweep" / "1" / "results.json").exists()  # job 1 ran after job 0 failed
    assert "k must be" in (tmp_path / "sweep" / "0" / "FAILED").read_text()
    assert "1 sweep job(s) failed: 0" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("override, named", [
    ("oserve.costmodel=bogus", "oserve"),  # a key of another experiment
    ("cluster.preset=foo", "cluster"),  # quickstart uses no cluster
    ("quickstart.num_request_types=many", "quickstart.num_request_types"),
    ("tpyo=3", "tpyo"),
])
def test_bad_overrides_fail_naming_the_key(tmp_path, override, named):
    out = _cli(["experiment=quickstart", override, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert out.returncode != 0
    assert named in out.stderr
    assert not (tmp_path / "run" / "results.json").exists()


def test_missing_data_is_one_clear_line(tmp_path):
    out = _cli(["experiment=quickstart", f"paths.data_dir={tmp_path / 'nowhere'}", "paths.fallback=none",
                f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert out.returncode == 1
    assert "error:" in out.stderr and "nowhere" in out.stderr and "make data" in out.stderr
    assert "Traceback" not in out.stderr


def test_paths_data_dir_beats_the_environment(tmp_path, data):
    out = _cli(["experiment=quickstart", f"paths.data_dir={data}", "paths.fallback=none",
                f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, env_extra={ENV_VAR: "/nonexistent"})
    assert out.returncode == 0, out.stderr[-2000:]
    log = (tmp_path / "run" / "run.log").read_text()
    assert f"data: real files from {data} (set by paths.data_dir)" in log


def test_readme_commands_name_real_experiments_and_keys():
    import re

    from hydra import compose, initialize_config_dir

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    known = experiments()
    lines = [ln.split("#")[0] for ln in readme.splitlines() if ln.startswith("loadwise experiment=")]
    assert lines
    conf = Path(__file__).resolve().parents[2] / "conf"
    for line in lines:
        args = line.split()[1:]
        name = args[0].split("=", 1)[1]
        assert name in known, line
        overrides = [a for a in args if not a.startswith("-") and "," not in a]
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            compose("config", overrides=overrides)  # every key the README shows exists in that experiment
    assert re.search(r"^source \.venv/bin/activate", readme, re.M)  # the set-up step the commands assume


def _broken_invariant(cfg, out_dir):
    raise AssertionError("queue length went negative")


def test_internal_error_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    import experiments.run as entry

    monkeypatch.setitem(entry.TASKS, "quickstart", f"{__name__}:_broken_invariant")
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["loadwise", "experiment=quickstart", f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as end:
        entry.main()
    assert end.value.code == 3
    err = capsys.readouterr().err
    assert "internal error in task quickstart (AssertionError: queue length went negative)" in err
    assert "HYDRA_FULL_ERROR=1" in err and "Traceback" not in err
