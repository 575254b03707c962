"""Every experiment file composes with its own schema; wrong keys, types and choices fail with Hydra's message."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

import experiments.run  # noqa: F401  (registers the schema)
from experiments.config import SCHEMAS
from experiments.run import TASKS

CONF = Path(__file__).resolve().parents[2] / "conf"
EXPERIMENTS = sorted(str(p.relative_to(CONF / "experiment").with_suffix("")) for p in (CONF / "experiment").rglob("*.yaml"))


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name):
    cfg = _compose([f"experiment={name}"])
    assert cfg.task in TASKS, f"conf/experiment/{name}.yaml sets task={cfg.task!r}, not in experiments.run.TASKS"
    assert type(cfg).__name__ == "DictConfig" and OmegaConf.get_type(cfg) is SCHEMAS[cfg.task]
    # The header comment shows the command that runs it.
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    assert f"loadwise experiment={name}" in text
    # The file holds only overrides: its defaults and the task (plus keys whose value differs from the schema).
    body = OmegaConf.load(CONF / "experiment" / f"{name}.yaml")
    defaults = OmegaConf.structured(SCHEMAS[cfg.task])
    for key in set(body) - {"defaults", "task"}:
        assert OmegaConf.select(body, key) != OmegaConf.select(defaults, key), f"{name}.yaml restates {key}"


def test_only_the_experiments_own_keys_exist():
    # quickstart has no serving or cluster section: a key of another experiment is rejected, not ignored.
    for wrong in ("oserve.costmodel=bogus", "cluster.preset=local_cpu", "planner_speed.repeats=1"):
        with pytest.raises(ConfigCompositionException, match=wrong.split(".")[0]):
            _compose(["experiment=quickstart", wrong])
    with pytest.raises(ConfigCompositionException, match="quickstart"):
        _compose(["experiment=laer/planner_speed", "quickstart.interval_s=1"])


def test_choices_are_checked_when_the_config_is_built():
    with pytest.raises(ConfigCompositionException, match="cluster.preset"):
        _compose(["experiment=oserve/spatial", "cluster.preset=foo"])


@pytest.mark.parametrize("cluster", sorted(p.stem for p in (CONF / "cluster").glob("*.yaml")))
def test_every_cluster_builds(cluster):
    from common.topology import get_cluster

    cfg = _compose(["experiment=oserve/spatial", f"cluster={cluster}"])
    assert cfg.cluster.preset.value == cluster
    spec = get_cluster(cfg.cluster.preset, cfg.cluster.num_nodes, cfg.cluster.devices_per_node)
    assert spec.num_devices >= 1


def test_wrong_key_fails():
    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        _compose(["experiment=quickstart", "quickstart.no_such_key=1"])
    with pytest.raises(ConfigCompositionException, match="tpyo"):
        _compose(["tpyo=3"])


def test_wrong_type_fails():
    with pytest.raises((ConfigCompositionException, ValidationError), match="num_request_types"):
        _compose(["experiment=quickstart", "quickstart.num_request_types=many"])


def test_unknown_task_names_the_key(tmp_path):
    cfg = _compose(["task=nope"])
    with pytest.raises(ValueError, match="config key 'task'.*'nope'"):
        experiments.run.run(cfg, tmp_path)


def test_no_config_group_shadows_a_plain_key():
    # `NAME=value` picks a file of conf/NAME/ when that group exists, so a plain (non-section) key of that name in any
    # experiment could not be set from the command line.
    import dataclasses

    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    for task, schema in SCHEMAS.items():
        for f in dataclasses.fields(schema):
            if f.name in groups:
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                assert default is None or dataclasses.is_dataclass(default), (
                    f"schema of {task!r}: plain key {f.name!r} is shadowed by the config group conf/{f.name}/")
