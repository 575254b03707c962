"""experiment=laer/train: composes, checks its keys with one-line errors, trains tiny on 2 spawned ranks, checkpoints
and resumes; the same module under torchrun (slow)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

import experiments.run  # noqa: F401  (registers the schemas)
from experiments.train import spec_of

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
TINY = ["model.vocab_size=320", "model.hidden=16", "model.ffn=24", "model.num_layers=2", "model.num_heads=2",
        "model.num_kv_heads=1", "model.num_experts=4", "model.max_seq_len=32", "train.slots_per_device=3",
        "data.vocab_size=300", "data.seq_len=16", "data.global_batch=4", "trainer.warmup_steps=1", "trainer.lr=1e-2"]


@pytest.fixture
def corpus(tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    for i in range(4):
        (src / f"m{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x * {j}\n" for j in range(60)))
    return [f"data.corpus_dir={src}", f"data.cache_dir={tmp_path / 'cache'}"]


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["experiment=laer/train"] + overrides)


def test_bad_keys_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigCompositionException, match="parallel"):
        _compose(["parallel=tensor"])
    with pytest.raises(ConfigCompositionException, match="planner"):
        _compose(["planner=nonesuch"])
    with pytest.raises(ValueError, match=r"planner.name: unknown planner 'nonesuch'"):
        spec_of(_compose(["planner.name=nonesuch"]), tmp_path)
    with pytest.raises(ValueError, match=r"train.slots_per_device: N\*C = 2\*3 slots cannot hold model.num_experts = 8"):
        spec_of(_compose(["train.slots_per_device=3"]), tmp_path)
    with pytest.raises(ValueError, match="parallel=ep needs model.num_experts = 6 divisible by the 4 ranks"):
        spec_of(_compose(["parallel=ep", "model.num_experts=6", "train.ranks=4"]), tmp_path)
    with pytest.raises(ValueError, match="data.vocab_size = 8192 exceeds model.vocab_size = 4096"):
        spec_of(_compose(["data.vocab_size=8192"]), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"data.corpus_dir: {tmp_path / 'empty'} holds no"):
        experiments.run.run(_compose([f"data.corpus_dir={tmp_path / 'empty'}"]), tmp_path / "out")


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _train_and_checkpoint(tmp_path, corpus):
    ckpt = tmp_path / "ckpt"
    # Trace replay on: the routers follow the SmartMoE trace (a synthetic stand-in where the data is absent).
    common = TINY + corpus + [f"train.checkpoint_dir={ckpt}", "train.checkpoint_every=2", "train.trace_replay=true",
                              "paths.fallback=synthetic"]
    res = experiments.run.run(_compose(common + ["trainer.steps=4"]), tmp_path / "a")
    rows = _rows(tmp_path / "a" / "train.csv")
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3] and (tmp_path / "a" / "train.png").is_file()
    assert res["last_loss"] < res["first_loss"]
    assert all(r["plan_lag"] == "" for r in rows[:1]) and all(int(r["plan_lag"]) == 2 for r in rows[1:])
    assert sorted(p.name for p in ckpt.iterdir()) == ["step_000002", "step_000004"]
    return rows, common, ckpt


def test_trains_tiny_and_checkpoints(tmp_path, corpus):
    """2 spawned ranks, FSEP + laer_plus under trace replay: loss falls, one CSV row per step, the plan lag,
    checkpoints every 2 steps."""
    _train_and_checkpoint(tmp_path, corpus)


@pytest.mark.slow
def test_resume_through_the_experiment(tmp_path, corpus):
    """Resume from step 2 in another run: steps 2 and 3 again, with the uninterrupted run's losses."""
    rows, common, ckpt = _train_and_checkpoint(tmp_path, corpus)
    again = experiments.run.run(_compose(common + ["trainer.steps=4", f"train.resume={ckpt}",
                                                   f"train.checkpoint_dir={tmp_path / 'ckpt2'}"]), tmp_path / "b")
    assert again["steps"] == 0  # the newest checkpoint in the folder is step 4: nothing left to train
    again = experiments.run.run(_compose(common + ["trainer.steps=4", f"train.resume={ckpt / 'step_000002'}",
                                                   f"train.checkpoint_dir={tmp_path / 'ckpt3'}"]), tmp_path / "c")
    assert [r["step"] for r in again["rows"]] == [2, 3]
    assert [r["loss"] for r in again["rows"]] == [float(r["loss"]) for r in rows[2:]]


@pytest.mark.slow
def test_same_module_under_torchrun(tmp_path, corpus):
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc_per_node", "2", "-m", "experiments.run", "experiment=laer/train",
           f"hydra.run.dir={tmp_path / 'run'}", "trainer.steps=3"] + TINY + corpus
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(tmp_path / "run" / "train.csv")
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
