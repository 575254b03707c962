"""experiment=laer/bench_train: every system trains a tiny model through the laer/train path under trace-replay and
balanced routing, and the table, CSV and PNG come out with positive throughputs; only capacity mode drops."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import experiments.run  # noqa: F401  (registers the schemas)
from experiments.bench_train import RATES, SYSTEMS, aggregate, ep_imbalance, run

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.vocab_size=320", "model.hidden=16", "model.ffn=24", "model.num_layers=1", "model.num_heads=2",
        "model.num_kv_heads=1", "model.num_experts=4", "model.max_seq_len=32", "train.slots_per_device=2",
        "data.vocab_size=300", "data.seq_len=16", "data.global_batch=4", "bench_train.warmup_steps=1",
        "bench_train.measure_steps=1"]


def test_ep_imbalance_against_hand_count():
    counts = np.zeros((1, 2, 4))
    counts[0, 0] = [3, 1, 0, 0]  # device 0 holds experts 0, 1: 4 + 2 routes; device 1: 0 + 2
    counts[0, 1] = [1, 1, 1, 1]
    assert ep_imbalance(counts) == 6 / 4


def test_aggregate_is_median_with_min_max():
    runs = [{"system": "fsep", "routing": "trace", "repeat": i, "steps": 2, "tokens_per_step": 8, "drop_rate": 0.0,
             "step_cpu_s": c, "step_wall_s": c, "last_loss": 1.0, "skewed_steps": [1],
             **{k: v for k in RATES}} for i, (v, c) in enumerate([(10.0, 1.0), (30.0, 3.0), (12.0, 2.0)])]
    (row,) = aggregate(runs)
    assert row["repeats"] == 3 and row["step_cpu_s"] == 2.0
    for k in RATES:
        assert (row[k], row[f"{k}_min"], row[f"{k}_max"]) == (12.0, 10.0, 30.0)


def _run(tmp_path, extra):
    src = tmp_path / "corpus"
    src.mkdir()
    for i in range(4):
        (src / f"m{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x * {j}\n" for j in range(60)))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=laer/bench_train", f"data.corpus_dir={src}",
                                           f"data.cache_dir={tmp_path / 'cache'}", *TINY, *extra])
    return run(cfg, tmp_path)


def _check(tmp_path, out, names):
    rows = out["rows"]
    assert {(r["system"], r["routing"]) for r in rows} == {(n, r) for n in names for r in ("trace", "balanced")}
    assert all(r["wall_tokens_per_s"] > 0 and r["cpu_tokens_per_s"] > 0 for r in rows)
    assert all(r["drop_rate"] == 0 for r in rows if r["system"] != "ds_cap1")
    assert out["fsep_drop_rate"] == 0
    with open(tmp_path / "bench_train.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert (tmp_path / "bench_train.png").is_file()


def test_bench_train_tiny(tmp_path):
    """FSEP and EP, 2 repeats interleaved, 1 warm-up + 1 measured step per run, all in one spawned group."""
    out = _run(tmp_path, ["bench_train.systems=[fsep,ep]", "bench_train.repeats=2"])
    _check(tmp_path, out, ["fsep", "ep"])
    assert [(r["repeat"], r["system"]) for r in out["runs"]] == [(0, "fsep"), (0, "fsep"), (0, "ep"), (0, "ep"),
                                                                  (1, "fsep"), (1, "fsep"), (1, "ep"), (1, "ep")]
    assert all(r["repeats"] == 2 and r["cpu_tokens_per_s_min"] <= r["cpu_tokens_per_s"] <= r["cpu_tokens_per_s_max"]
               for r in out["rows"])
    assert out["fsep_vs_ep_skewed_cpu"] > 0
    assert out["fsep_vs_balanced_cpu"] > 0 and out["fsep_vs_balanced_wall"] > 0


@pytest.mark.slow
def test_bench_train_all_systems(tmp_path):
    out = _run(tmp_path, ["bench_train.repeats=1"])
    _check(tmp_path, out, [s.name for s in SYSTEMS])
    assert 0 < out["ds_cap1_drop_rate"] < 1  # the trace's skew overflows capacity 1.0
    assert out["fsep_vs_ep_skewed_cpu"] > 0
