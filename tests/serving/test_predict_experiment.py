"""experiment=oserve/predict runs tiny on the synthetic stand-ins, clamps the window loudly, and rejects bad keys."""

import csv
import json
import logging

import pytest
from hydra import compose, initialize_config_dir

import experiments.run  # noqa: F401  (registers the schemas)
from common.datapaths import REPO_ROOT

TINY = ["predict.bins_s=[2.0,4.0]", "predict.window=10", "predict.min_train_pairs=8", "predict.lstm.epochs=3",
        "predict.lstm.hidden=4"]


def _compose(overrides):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=["experiment=oserve/predict"] + overrides)


def test_runs_tiny_and_writes_the_table(synthetic_dir, tmp_path, caplog):
    from experiments.run import run

    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        res = run(_compose([f"paths.data_dir={synthetic_dir}", *TINY]), out)
    rows = list(csv.DictReader(open(out / "results.csv")))
    kinds = {"lstm", "aggregate_lstm", "moving_average", "ema", "seasonal_naive"}
    # The synthetic code stand-in lasts ~100 s: at 4 s bins its 70% head holds 17 intervals, so window 10 leaves
    # fewer than 8 pairs and is clamped, with a warning naming it.
    assert {(r["trace"], float(r["bin_s"]), r["predictor"]) for r in rows} == {
        (t, b, k) for t in ("conv", "code") for b in (2.0, 4.0) for k in kinds}
    assert all(float(r["rrmse"]) >= 0 and float(r["poisson_floor"]) > 0 for r in rows)
    assert "window clamped" in caplog.text and "bin size: conv" in caplog.text
    clamped = [r for r in rows if r["trace"] == "code" and r["bin_s"] == "4.0"]
    assert all(int(r["window"]) < 10 and int(r["train_pairs"]) == 8 for r in clamped)
    assert (out / "forecast.png").is_file() and (out / "rrmse_by_bin.png").is_file()
    assert res["data"]["source"] == "real"  # the stand-in directory was given as the data directory
    assert json.loads((out / "results.json").read_text())["results"]["table"]


@pytest.mark.parametrize("override, named", [("predict.head_share=1.0", "predict.head_share"),
                                             ("predict.bins_s=[]", "predict.bins_s"),
                                             ("predict.window=0", "predict.window")])
def test_bad_keys_are_one_line_errors(synthetic_dir, tmp_path, override, named):
    from experiments.run import run

    with pytest.raises(ValueError, match=named):
        run(_compose([f"paths.data_dir={synthetic_dir}", override]), tmp_path / "out")
