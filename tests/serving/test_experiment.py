import json

import pytest
from hydra import compose, initialize_config_dir

from experiments.run import run
from tests.serving.conftest import synthetic_requests, write_azure_csv

CONF = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "conf")
TINY = ["num_gpus=8", "oserve.gpu_counts=[8]", "oserve.rate_points=[1.0]", "oserve.sensitivity_mix=[0.0,0.5]",
        "oserve.sensitivity_requests=300", "oserve.patience=5"]


def _compose(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=["experiment=oserve/spatial"] + overrides)


def _check(out, tmp_path):
    for pol in ("oserve", "oserve_rr", "static_vllm"):
        m = out["policies"][pol]
        for k in ("p50_latency_s", "p99_latency_s", "throughput_rps", "slo_attainment"):
            assert k in m and m[k] == m[k]
        assert m["p50_latency_s"] <= m["p99_latency_s"]
    saved = json.loads((tmp_path / "results.json").read_text())["results"]  # experiments.run writes it
    assert set(saved["policies"]) == {"oserve", "oserve_rr", "static_vllm", "static_tp4"}
    assert saved["p99_speedup_vs_static_tp4"]["mean"] > 0
    assert (tmp_path / "results.csv").exists() and (tmp_path / "p99_vs_rate.png").stat().st_size > 0


def test_spatial_tiny_synthetic(tmp_path):
    arr, inp, out = synthetic_requests(500, rate=1.0)
    a = write_azure_csv(tmp_path / "a.csv", arr, inp, out)
    arr2, inp2, out2 = synthetic_requests(300, rate=0.5, seed=1)
    b = write_azure_csv(tmp_path / "b.csv", arr2, inp2, out2)
    cfg = _compose(TINY + [f"workload.trace_path={a}", f"oserve.extra_traces=[{b},mix]", "oserve.costmodel=roofline",
                           "model=opt-30b"])
    res = run(cfg, tmp_path)
    _check(res, tmp_path)
    assert {r for r in res["config"]["traces"]} == {"a", "b", "mix"}


def test_spatial_tiny_real(real_data, tmp_path):
    cfg = _compose(TINY + [f"paths.data_dir={real_data}", "workload.max_requests=1500", "oserve.extra_traces=[]"])
    _check(run(cfg, tmp_path), tmp_path)


@pytest.mark.parametrize("override, match", [
    ("workload.format=parquet", "workload.format"),
    ("num_gpus=0", "num_gpus"),
    ("model=bert", "unknown model"),
])
def test_bad_experiment_configs_fail_clearly(tmp_path, override, match):
    arr, inp, out = synthetic_requests(50)
    a = write_azure_csv(tmp_path / "a.csv", arr, inp, out)
    cfg = _compose(TINY + [f"workload.trace_path={a}", "oserve.extra_traces=[]", "oserve.costmodel=roofline", override])
    with pytest.raises(ValueError, match=match):
        run(cfg, tmp_path)


def test_model_too_big_for_gpus_fails_clearly(tmp_path):
    arr, inp, out = synthetic_requests(50)
    a = write_azure_csv(tmp_path / "a.csv", arr, inp, out)
    cfg = _compose(TINY + [f"workload.trace_path={a}", "oserve.extra_traces=[]", "oserve.costmodel=roofline",
                           "num_gpus=1", "oserve.gpu_counts=[1]", "model=llama2-70b"])
    with pytest.raises(ValueError, match="does not fit"):
        run(cfg, tmp_path)
