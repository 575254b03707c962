"""laer/fig8: composes through Hydra and runs tiny; the error / speedup arithmetic on a hand-computed case; a missing
paper CSV leaves the paper columns empty with one warning; bad config values name their key."""

from __future__ import annotations

import csv
import json
import logging
import math

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import experiments.run  # noqa: F401  (registers the schemas)
from common import datasets
from common.datapaths import ENV_VAR, REPO_ROOT
from experiments.laer_fig8 import headline, speedup_rows, summary_rows, time_rows
from tests.common import mirror

PAPER = "laer_moe_paper_results/e2e_analysis_backup.csv"
MODEL = "mixtral-8x7b-e8k2"


def _compose(overrides):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=["experiment=laer/fig8"] + overrides)


def _tiny(data_dir, paper: bool) -> list[str]:
    """A tiny trace (4 ranks, 8 experts: rescaled to 32 devices and the model's experts) and, if `paper`, a paper CSV
    with megatron 40 s and LAER 25 s in every setting of MODEL."""
    rng = np.random.default_rng(0)
    counts = rng.multinomial(64, rng.dirichlet(np.ones(8)), size=(6, 4, 2, 4)).astype(np.uint16)  # [I, R, L, M, E]
    np.savez(data_dir / "trace.npz", counts=counts, iterations=np.arange(6, dtype=np.int32) * 10)
    if paper:
        (data_dir / PAPER).parent.mkdir(parents=True)
        lines = ["dataset,method,model_name,aux_loss,avg_time_ms,std_time_ms,matched_iterations,total_iterations"]
        lines += [f"{d},{m},{MODEL},{a},{t},1.0,50,50" for d in ("C4", "wikitext") for a in ("0.0", "0.0001")
                  for m, t in (("megatron", 40000.0), ("LAER", 25000.0))]
        (data_dir / PAPER).write_text("\n".join(lines) + "\n")
    return [f"paths.data_dir={data_dir}", "paths.fallback=none", "fig8.expert_trace=trace.npz", f"fig8.models=[{MODEL}]",
            "fig8.samples=1", "fig8.systems=[megatron_ep,laer]"]


def test_runs_tiny_and_writes_tables_plots_and_headline(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "out"
    result = experiments.run.run(_compose(_tiny(data, paper=True)), out)
    for name in ("times.csv", "speedups.csv", "summary.csv", "fig8.png", "fig8_speedups.png", "results.json"):
        assert (out / name).is_file(), name
    times = list(csv.DictReader(open(out / "times.csv")))
    assert len(times) == 2 * 4  # 2 systems x the paper's 4 (dataset, aux) settings, one simulated time each
    assert {float(r["paper_s"]) for r in times if r["system"] == "laer"} == {25.0}
    ours = {r["system"]: float(r["ours_s"]) for r in times}
    for r in times:  # the split of our time sums to it
        assert sum(float(r[t]) for t in ("attention_s", "expert_s", "alltoall_s", "exposed_s", "head_s")
                   ) == pytest.approx(float(r["ours_s"]))
    assert {(r["system"], r["baseline"]) for r in result["speedups"]} == {("laer", "megatron_ep")}
    top = json.loads((out / "results.json").read_text())["results"]["headline"]
    assert top[0]["figure"] == "Fig. 8" and top[0]["metric"] == "speedup of laer over megatron_ep"
    assert top[0]["ours"] == pytest.approx(ours["megatron_ep"] / ours["laer"]) and top[0]["paper"] == pytest.approx(1.6)
    assert top[0]["error"] == pytest.approx((top[0]["ours"] - 1.6) / 1.6)


def test_error_and_speedup_arithmetic_by_hand():
    sim = {(MODEL, "megatron_ep"): np.array([4.0, 6.0]), (MODEL, "fsdp_ep"): np.array([3.0, 3.0]),
           (MODEL, "laer"): np.array([2.0, 2.0])}  # means 5, 3, 2
    paper = {("C4", MODEL, 0.0, "megatron_ep"): 6.0, ("C4", MODEL, 0.0, "fsdp_ep"): 4.0,
             ("C4", MODEL, 0.0, "laer"): 2.5, ("wikitext", MODEL, 0.0, "megatron_ep"): 8.0,
             ("wikitext", MODEL, 0.0, "laer"): 2.0}
    times = {(r["dataset"], r["aux_loss"], r["system"]): r for r in time_rows(sim, paper)}
    t = times["C4", 0.0, "megatron_ep"]
    assert (t["ours_s"], t["ours_std_s"], t["paper_s"]) == (5.0, 1.0, 6.0) and t["error"] == pytest.approx(-1 / 6)
    assert times["C4", 0.0001, "laer"]["paper_s"] is None and times["C4", 0.0001, "laer"]["error"] is None

    ups = speedup_rows(sim, paper, tolerance=0.10)
    by = {(r["dataset"], r["aux_loss"], r["system"], r["baseline"]): r for r in ups}
    r = by["C4", 0.0, "laer", "megatron_ep"]  # ours 5 / 2 = 2.5, paper 6 / 2.5 = 2.4: +4.2%, within 10%
    assert (r["ours"], r["paper"], r["within"]) == (2.5, 2.4, True) and r["error"] == pytest.approx(0.1 / 2.4)
    r = by["C4", 0.0, "fsdp_ep", "megatron_ep"]  # ours 5 / 3, paper 6 / 4 = 1.5: +11.1%, outside
    assert r["ours"] == pytest.approx(5 / 3) and r["error"] == pytest.approx(1 / 9) and r["within"] is False
    r = by["C4", 0.0, "laer", "fsdp_ep"]  # ours 3 / 2 = 1.5, paper 4 / 2.5 = 1.6: -6.25%
    assert r["error"] == pytest.approx(-0.0625) and r["within"] is True
    r = by["wikitext", 0.0, "laer", "megatron_ep"]  # paper 8 / 2 = 4: -37.5%
    assert r["error"] == pytest.approx(-0.375) and r["within"] is False
    assert by["wikitext", 0.0, "laer", "fsdp_ep"]["paper"] is None  # the paper's fsdp_ep time is missing there

    summary = {(s["system"], s["baseline"]): s for s in summary_rows(ups)}
    s = summary["laer", "megatron_ep"]
    assert (s["settings"], s["within"], s["geomean_ours"]) == (2, 1, 2.5)
    assert s["geomean_paper"] == pytest.approx(math.sqrt(2.4 * 4.0))
    assert s["geomean_error"] == pytest.approx(2.5 / math.sqrt(9.6) - 1)
    top = {(h["metric"], h["setting"].split(" ")[0]): h for h in headline(list(summary.values()), ups)}
    assert top["speedup of laer over fsdp_ep", MODEL]["paper"] == pytest.approx(1.6)
    assert top["speedup of laer over fsdp_ep", MODEL]["error"] == pytest.approx(-0.0625)


def test_fresh_clone_runs_on_a_stand_in_trace_without_paper_numbers(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(datasets, "GITHUB_RAW", mirror.closed_port_url())  # offline: nothing answers
    empty = tmp_path / "data"
    empty.mkdir()
    cfg = _compose([f"paths.data_dir={empty}", "paths.fallback=synthetic", f"fig8.models=[{MODEL}]", "fig8.samples=1",
                    "fig8.systems=[megatron_ep,laer]"])
    with caplog.at_level(logging.WARNING):
        result = experiments.run.run(cfg, tmp_path / "out")
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and PAPER in r.getMessage()]
    assert len(warned) == 1 and "paper columns stay empty" in warned[0]
    assert result["settings"]["data"]["source"] == "synthetic"
    assert all(r["paper_s"] is None and r["error"] is None for r in result["times"])
    assert all(h["paper"] is None for h in result["headline"]) and result["headline"]
    assert not any(empty.iterdir())  # no paper numbers made up in the data directory


@pytest.mark.parametrize("override, key", [
    ("fig8.models=[mixtral-1x1b]", "fig8.models"), ("fig8.systems=[megatron_ep,deepspeed]", "fig8.systems"),
    ("fig8.samples=0", "fig8.samples"), ("fig8.tolerance=1.5", "fig8.tolerance"),
])
def test_bad_values_name_their_key(tmp_path, override, key):
    with pytest.raises(ValueError, match=f"config key '{key}'") as e:
        experiments.run.run(_compose([override]), tmp_path)
    assert "\n" not in str(e.value)


def test_flexmoe_layouts_carry_over_the_samples_before():
    # The layout FlexMoE's run has at a sample: the static one re-planned `replans` times on each of the `warmup`
    # samples before it, the last of them one time less (simulate_iteration makes that re-plan itself).
    from common.traces import ExpertLoadTrace
    from experiments.laer_paper import PaperRun, carried_layouts, paper_model
    from training.planner.flexmoe import FlexMoE
    from training.sim import trace_loads

    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, (4, 4, 2, 1, 8))
    counts[..., 0] += 400  # one hot expert, so the moves have something to do
    trace = ExpertLoadTrace(counts, np.arange(4) * 10)
    model = paper_model(MODEL)
    n, c, g = 16, 1, 16  # one node, 2 replicas per expert: the hot one takes a donor's device
    tpd = PaperRun().tokens_per_device(n)
    planner = FlexMoE(n, c, g)
    static = np.stack([planner.static_layout(model.num_experts)] * model.num_layers)
    np.testing.assert_array_equal(carried_layouts(model, trace, 3, n, c, g, tpd, warmup=0), static)
    want = list(static)
    for t, times in ((1, 2), (2, 1)):
        loads = trace_loads(trace, n, model.num_layers, model.num_experts, model.top_k, tpd, t)
        for _ in range(times):
            want = [planner.step(x, y).layout.slots for x, y in zip(loads, want)]
    got = carried_layouts(model, trace, 3, n, c, g, tpd, warmup=2, replans=2)
    np.testing.assert_array_equal(got, np.stack(want))
    assert not np.array_equal(got, static)
