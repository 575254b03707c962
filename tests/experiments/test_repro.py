"""experiment=repro (the default of `make run`): it composes, every part it lists composes as its own experiment, and
a run of a few tiny parts writes report.md with each part's headline table and links to the files it wrote; an
unknown part is a one-line error; a failing part is reported while the others run (and the command exits 1); a part
whose experiment file does not exist, or whose data has no stand-in on a machine without data, is skipped with a
message."""

from __future__ import annotations

import json
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

import experiments.run
from common import datasets
from common.datapaths import ENV_VAR
from experiments.config import ReproPart
from experiments.repro import CONF, PartStatus, compose_experiment
from tests.common import mirror

# Parts that finish in seconds on the synthetic stand-ins (the catalog's own overrides are sized for minutes).
TINY_PLANNER = ["planner_quality.slots=[4]", "planner_quality.scale_devices=[]", "planner_quality.iteration_stride=25",
                "planner_quality.layer_stride=12", "planner_quality.milp_instances=1", "planner_quality.milp_slots=[2]",
                "planner_quality.algorithms=[laer,laer_plus]"]
TINY_SPEED = ["planner_speed.devices=[64]", "planner_speed.slots=[2,4]", "planner_speed.repeats=1"]


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.fixture
def offline_empty(tmp_path, monkeypatch):
    """A fresh clone's view: no data directory contents and no network."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(datasets, "GITHUB_RAW", mirror.closed_port_url())
    empty = tmp_path / "data"
    empty.mkdir()
    return empty


def _with_parts(cfg, parts: dict[str, tuple[str, list[str]]]):
    with open_dict(cfg.repro.catalog):
        for name, (experiment, overrides) in parts.items():
            cfg.repro.catalog[name] = ReproPart(experiment, overrides)
    cfg.repro.parts = list(parts)
    return cfg


def test_default_is_repro_and_every_listed_part_composes():
    cfg = _compose([])
    assert cfg.task == "repro" and cfg.paths.fallback.value == "synthetic"
    assert cfg.repro.parts and set(cfg.repro.parts) <= set(cfg.repro.catalog)
    names = {str(cfg.repro.catalog[p].experiment) for p in cfg.repro.parts}
    assert {"laer/planner_quality", "laer/planner_speed", "laer/train", "oserve/spatial", "oserve/temporal",
            "laer/fig8", "laer/fig10", "laer/fig12"} <= names
    for part in cfg.repro.parts:
        spec = cfg.repro.catalog[part]
        if (CONF / "experiment" / f"{spec.experiment}.yaml").is_file():  # the figures may not be merged yet
            part_cfg = compose_experiment(str(spec.experiment), list(spec.overrides))
            assert part_cfg.task in experiments.run.TASKS, part


def test_unknown_part_is_one_line_error_listing_the_known_ones(tmp_path):
    cfg = _compose(["repro.parts=[laer_planner,nonesuch]"])
    with pytest.raises(ValueError) as err:
        experiments.run.run(cfg, tmp_path)
    message = str(err.value)
    assert "\n" not in message and "repro.parts" in message and "'nonesuch'" in message
    assert "laer_planner" in message and "oserve_temporal" in message
    assert not (tmp_path / "laer_planner").exists()  # checked before anything ran


def test_tiny_parts_on_a_fresh_clone_write_the_report(tmp_path, offline_empty):
    cfg = _with_parts(_compose([f"paths.data_dir={offline_empty}"]), {
        "planner": ("laer/planner_quality", TINY_PLANNER),
        "speed": ("laer/planner_speed", TINY_SPEED),  # its paper CSV has no stand-in
        "figure": ("laer/no_such_figure", ["no_such_figure.samples=2"]),
        "first_look": ("quickstart", []),
    })
    out = tmp_path / "run"
    res = experiments.run.run(cfg, out)
    status = {p["name"]: p["status"] for p in res["parts"]}
    assert status == {"planner": "ok", "speed": "skipped", "figure": "skipped", "first_look": "ok"}
    assert res["failed"] == [] and res["synthetic"] == ["planner", "first_look"]
    # Each ran part left what its own command leaves, in its own folder.
    assert json.loads((out / "planner" / "results.json").read_text())["task"] == "planner_quality"
    assert json.loads((out / "first_look" / "results.json").read_text())["task"] == "quickstart"
    # The headline rows of the planner study, paper column empty (the paper has no such numbers).
    rows = [r for r in res["headline"] if r["part"] == "planner"]
    assert rows and all(r["paper"] is None and r["error"] is None for r in rows)
    assert any(r["metric"] == "laer_plus / laer layer time" for r in rows)

    report = (out / "report.md").read_text()
    assert "SYNTHETIC DATA" in report.split("## ")[0]  # the banner, above the parts
    planner = report.split("## planner")[1].split("## ")[0]
    assert "| figure | setting | metric | ours | paper | error |" in planner
    assert "laer_plus / laer layer time" in planner
    assert "(planner/summary.csv)" in planner and "(planner/quality.png)" in planner
    for link in [ln for ln in report.split("(") if ln.startswith(("planner/", "first_look/"))]:
        assert (out / link.split(")")[0]).is_file(), link  # every link resolves, relative to the run directory
    assert "synthetic_data" not in report  # the stand-in inputs are not results
    assert "laer/no_such_figure" in report and "does not exist yet" in report
    speed = report.split("## speed")[1].split("## ")[0]
    assert "Skipped" in speed and "planner_results_backup.csv" in speed
    assert all(p["wall_s"] >= 0 and p["cpu_s"] >= 0 for p in res["parts"])


def test_a_failing_part_is_reported_and_the_others_still_run(tmp_path, synthetic_dir):
    cfg = _with_parts(_compose([f"paths.data_dir={synthetic_dir}"]), {
        "broken": ("quickstart", ["quickstart.num_request_types=0"]),
        "first_look": ("quickstart", []),
    })
    out = tmp_path / "run"
    res = experiments.run.run(cfg, out)
    assert res["failed"] == ["broken"]
    broken, after = res["parts"]
    assert broken["status"] == PartStatus.failed.value and "k must be" in broken["message"]
    assert "\n" not in broken["message"]
    assert after["status"] == "ok" and (out / "first_look" / "results.json").is_file()
    assert "Traceback" in (out / "broken" / "FAILED").read_text()
    section = (out / "report.md").read_text().split("## broken")[1].split("## ")[0]
    assert "**FAILED**: ValueError:" in section and "k must be" in section and "(broken/FAILED)" in section
    assert json.loads((out / "results.json").read_text())["results"]["failed"] == ["broken"]


def test_the_command_exits_nonzero_after_writing_results_when_a_part_failed(tmp_path, synthetic_dir, monkeypatch,
                                                                            capsys):
    run_dir = tmp_path / "run"
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", [
        "loadwise", f"paths.data_dir={synthetic_dir}", "repro.parts=[laer_planner]",
        "repro.catalog.laer_planner.experiment=quickstart",
        "repro.catalog.laer_planner.overrides=['quickstart.num_request_types=0']", f"hydra.run.dir={run_dir}"])
    with pytest.raises(SystemExit) as end:
        experiments.run.main()
    assert end.value.code == 1
    assert "1 part(s) of task repro failed: laer_planner" in capsys.readouterr().err
    assert json.loads((run_dir / "results.json").read_text())["results"]["failed"] == ["laer_planner"]
    assert (run_dir / "report.md").is_file()


def test_part_outputs_are_linked_relative_to_the_run_dir():
    from experiments.repro import PartOutcome, render_report

    o = PartOutcome("p", "laer/x", ["a=1"], PartStatus.ok, wall_s=1.0, cpu_s=0.5, data_source="real",
                    headline=[{"figure": "Fig. 8", "setting": "s | t", "metric": "speedup", "ours": 1.1,
                               "paper": 1.0, "error": 0.1}],
                    files=["p/a.csv", "p/sub/b.png"])
    text = render_report([o], 1.0, 0.5)
    assert "| Fig. 8 | s \\| t | speedup | 1.1 | 1 | +10.0% |" in text
    assert "[a.csv](p/a.csv)" in text and "![sub/b.png](p/sub/b.png)" in text
    assert "SYNTHETIC" not in text


@pytest.mark.slow
def test_the_default_parts_on_a_fresh_clone_run_or_skip_none_fails(tmp_path, offline_empty):
    """`make run` with no data and no network: the parts with stand-ins run on them, the others say what is missing."""
    res = experiments.run.run(_compose([f"paths.data_dir={offline_empty}"]), tmp_path / "run")
    assert res["failed"] == []
    status = {p["name"]: p["status"] for p in res["parts"]}
    assert status["laer_planner"] == "ok" and status["laer_train"] == "ok"
    assert "laer_planner" in res["synthetic"]
    assert all(p["message"] for p in res["parts"] if p["status"] == "skipped")
