"""experiment=oserve/bench: the peer figures come from one reference file with their source, and every figure gets a
verdict that says whether we agree."""

import json

import pytest
from hydra import compose, initialize_config_dir

from experiments import reference
from experiments.bench_oserve import PEER_METRICS, known_reasons, verdict
from experiments.run import run

CONF = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "conf")


def test_verdict_hand_cases():
    assert verdict(1.10, 1.0, 0.15) == (True, pytest.approx(1.10))
    assert verdict(0.86, 1.0, 0.15)[0] and not verdict(0.84, 1.0, 0.15)[0]
    assert verdict(2.0, 1.0, 0.15) == (False, 2.0)


def test_reference_file_names_source_setting_and_figures():
    ref = reference.load("vidur.json")
    assert ref["source"] and 0 < ref["agree_within"] < 1
    for key in ("model", "cluster", "gpus", "trace", "dispatch", "max_model_len"):
        assert key in ref["setting"]
    for name, dep in ref["deployments"].items():
        assert dep["replicas"] * dep["tp"] == ref["setting"]["gpus"], name
        assert dep["figures"] and set(dep["figures"]) <= set(PEER_METRICS)
    assert known_reasons(ref, "2xtp8", "p99_latency_s", "measured")  # the 2-8x P99 gap has its reasons
    assert known_reasons(ref, "4xtp4", "p50_ttft_s", "measured") == []  # that one agrees


def test_every_reference_file_loads():
    names = sorted(p.name for p in reference.HERE.glob("*.json"))
    assert {"vidur.json", "oserve_paper.json"} <= set(names)
    for name in names:
        assert reference.load(name)["source"]


def test_reference_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="vidur.json"):
        reference.load("nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"setting": {}}))
    with pytest.raises(ValueError, match="source"):
        reference.load(bad)


def test_bench_tiny_real(real_data, tmp_path):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["experiment=oserve/bench", f"paths.data_dir={real_data}",
                                           "bench.max_requests=800", "bench.scheduler_gpus=[8]",
                                           "bench.peer_costmodels=[roofline]"])
    run(cfg, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())["results"]
    assert saved["requests"] == 800
    assert {r["what"] for r in saved["rows"]} >= {"scheduler 8 GPUs", "brute force 8 GPUs"}
    peer = saved["peer_check"]
    assert {(r["deployment"], r["costmodel"]) for r in peer} == {("4xtp4", "roofline"), ("2xtp8", "roofline")}
    for r in peer:
        if r["reference"] is None:
            assert r["verdict"] == "no reference figure"
        else:
            assert r["ratio"] == pytest.approx(r["ours"] / r["reference"])
            assert r["verdict"].startswith("agrees within 15%" if abs(r["ratio"] - 1) <= 0.15 else "differs")
    for f in ("bench_oserve.csv", "peer_check.csv", "bench_oserve.png"):
        assert (tmp_path / f).stat().st_size > 0
