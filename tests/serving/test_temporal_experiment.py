"""oserve/temporal and oserve/ablation compose and run tiny (synthetic traces, a small model, short phases)."""

import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from experiments.run import run
from tests.serving.conftest import synthetic_requests, write_azure_csv

CONF = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "conf")
TINY = ["num_gpus=8", "oserve.costmodel=roofline", "oserve.model=opt-30b", "temporal.num_phases=2",
        "temporal.phase_s=60", "controller.interval_s=20", "controller.horizon_s=40", "temporal.window=1",
        "temporal.train_phases=3", "temporal.train_offset_s=60", "temporal.predictor=moving_average",
        "temporal.migration_interval_s=20", "temporal.p99_bin_s=30", "oserve.static_candidates=1",
        "workload.num_types=2", "oserve.scheduler.patience=3"]


def _compose(name, overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[f"experiment=oserve/{name}"] + overrides)


def _sources(tmp_path):
    arr, inp, out = synthetic_requests(400, rate=2.0)
    conv = write_azure_csv(tmp_path / "conv.csv", arr, np.minimum(inp, 400), out)
    arr2, inp2, out2 = synthetic_requests(300, rate=1.5, seed=1)
    code = write_azure_csv(tmp_path / "code.csv", arr2, np.maximum(inp2, 1500), np.minimum(out2, 30))
    return [f"temporal.conv_trace={conv}", f"temporal.code_trace={code}", "temporal.cycles=[[conv,code]]"]


def test_temporal_tiny(tmp_path):
    cfg = _compose("temporal", TINY + _sources(tmp_path) + ["temporal.sensitivity_changes=[0.0,1.0]"])
    res = run(cfg, tmp_path)
    m = res["policies"]["conv/code"]
    assert set(m) == {"best_static", "oserve", "oserve_static", "oserve_oracle", "vllm_reload", "llumnix"}
    for p, v in m.items():
        assert v["p99_latency_s"] > 0, p
    r = res["p99_speedup_vs_best_static"]["per_case"]["conv/code"]
    assert r == pytest.approx(m["best_static"]["p99_latency_s"] / m["oserve"]["p99_latency_s"])
    assert [s["change"] for s in res["sensitivity"]] == [0.0, 1.0]
    assert res["sensitivity"][0]["switches"] == 0  # change 0: one source throughout, nothing to switch for
    saved = json.loads((tmp_path / "results.json").read_text())["results"]
    assert saved["paper"]["p99_speedup_vs_reload"] == {"max": 1.5, "mean": 1.3}
    for f in ("results.csv", "timeline.csv", "forecast.csv", "sensitivity.csv"):
        assert (tmp_path / f).stat().st_size > 0, f
    for f in ("timeline.png", "forecast.png", "sensitivity.png"):
        assert (tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f


def test_ablation_tiny(tmp_path):
    cfg = _compose("ablation", TINY + _sources(tmp_path))
    res = run(cfg, tmp_path)
    assert list(res["variants"]["conv/code"]) == ["reload", "+heterogeneous", "+dispatch", "+switching"]
    assert res["mean_p99_gain_vs_reload"]["reload"] == 0.0
    assert (tmp_path / "ablation.csv").exists() and (tmp_path / "ablation.png").stat().st_size > 0


def test_user_trace_in_mooncake_format(tmp_path):
    """Any trace in the Mooncake format (timestamp ms, input_length, output_length) replaces the phase shifts."""
    arr, inp, out = synthetic_requests(160, rate=2.0)
    path = tmp_path / "user.jsonl"
    path.write_text("".join(json.dumps({"timestamp": int(t * 1000), "input_length": int(i), "output_length": int(o)})
                            + "\n" for t, i, o in zip(arr, inp, out)))
    cfg = _compose("temporal", TINY + [f"temporal.user_trace={path}", "workload.format=mooncake",
                                       "temporal.sensitivity_changes=[]"])
    res = run(cfg, tmp_path)
    assert list(res["policies"]) == ["user"] and res["sensitivity"] == []


@pytest.mark.parametrize("override, key", [("controller.horizon_s=0", "controller.horizon_s"),
                                           ("controller.interval_s=0", "controller.interval_s"),
                                           ("temporal.window=50", "temporal.window"),
                                           ("temporal.cycles=[[conv,chat]]", "temporal.cycles")])
def test_bad_inputs_are_one_line_errors(tmp_path, override, key):
    cfg = _compose("temporal", TINY + _sources(tmp_path) + [override])
    with pytest.raises(ValueError, match=key) as e:
        run(cfg, tmp_path)
    assert "\n" not in str(e.value)
