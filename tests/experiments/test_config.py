"""Every experiment file composes; wrong keys and types fail with Hydra's message."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

import experiments.run  # noqa: F401  (registers the schema)
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
    # The header comment shows the command that runs it.
    assert "python -m experiments.run" in (CONF / "experiment" / f"{name}.yaml").read_text()


@pytest.mark.parametrize("cluster", sorted(p.stem for p in (CONF / "cluster").glob("*.yaml")))
def test_every_cluster_builds(cluster):
    from common.topology import get_cluster

    cfg = _compose([f"cluster={cluster}"])
    spec = get_cluster(cfg.cluster.preset, cfg.cluster.num_nodes, cfg.cluster.devices_per_node)
    assert spec.num_devices >= 1


def test_wrong_key_fails():
    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        _compose(["quickstart.no_such_key=1"])
    with pytest.raises(ConfigCompositionException, match="tpyo"):
        _compose(["tpyo=3"])


def test_wrong_type_fails():
    with pytest.raises((ConfigCompositionException, ValidationError), match="num_request_types"):
        _compose(["quickstart.num_request_types=many"])


def test_unknown_task_names_the_key(tmp_path):
    cfg = _compose(["task=nope"])
    with pytest.raises(ValueError, match="config key 'task'.*'nope'"):
        experiments.run.run(cfg, tmp_path)
