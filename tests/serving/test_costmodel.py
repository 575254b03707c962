import csv
import dataclasses

import numpy as np
import pytest

from common.topology import a100_80g_4x8, h100_80g_4x8
from serving.costmodel import CostModel, ReplicaConfig, get_model, load_perf_table
from serving.costmodel.calibrate import roofline_errors
from serving.costmodel.measured import measured_cost
from serving.costmodel.roofline import RooflineParams, roofline_cost

HEADER = "model,hardware,prompt_size,batch_size,token_size,peak_power,average_power,prompt_time,token_time,e2e_time,tensor_parallel\n"


def _table(tmp_path):
    rows = []
    for p, pt in [(128, 50.0), (512, 120.0), (2048, 400.0)]:
        rows.append(f"llama2-70b,a100-80gb,{p},1,128,1,1,{pt},40.0,0,4")
        rows.append(f"llama2-70b,a100-80gb,{p},1,128,1,1,{pt + 2},40.0,0,4")  # repeats are averaged
    for b, tt in [(2, 41.0), (8, 44.0), (64, 70.0)]:
        rows.append(f"llama2-70b,a100-80gb,512,{b},128,1,1,{120.0 * b},{tt},0,4")
    path = tmp_path / "perf.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n")
    return path


def test_measured_reproduces_table_points_synthetic(tmp_path):
    t = load_perf_table(_table(tmp_path))
    c = measured_cost(t, get_model("llama2-70b"), a100_80g_4x8(), ReplicaConfig(4))
    for p, pt in [(128, 51.0), (512, 121.0), (2048, 401.0)]:
        assert c.prefill_time(p) == pytest.approx(pt / 1e3, rel=1e-12)
    # 512 x 64 = 32768 > 2048: a batched knot (64 prompts of 512: its attention work is 64 x 512^2).
    assert c.prefill_time(512 * 64, 64 * 512**2) == pytest.approx(120.0 * 64 / 1e3)
    # Decode knots at the context they were measured with: b x (mean prompt + half of the 128 generated tokens).
    ctx = {1: (128 + 512 + 2048) / 3 + 64, 2: 2 * 576, 8: 8 * 576, 64: 64 * 576}
    for b, tt in [(1, 40.0), (2, 41.0), (8, 44.0), (64, 70.0)]:
        assert c.decode_time(b, ctx[b]) == pytest.approx(tt / 1e3, rel=1e-12)
    # Linear in B in between, at an interpolated context.
    assert c.decode_time(5, (ctx[2] + ctx[8]) / 2) == pytest.approx((41 + (44 - 41) * 3 / 6) / 1e3)


def test_measured_reproduces_real_table(real_data):
    t = load_perf_table(real_data / "splitwise_sim_perf_model" / "perf_model.csv")
    rows = [r for r in t.rows if r[:3] == ("llama2-70b", "h100-80gb", 8)]
    with (real_data / "splitwise_sim_perf_model" / "perf_model.csv").open() as fh:  # (prompt, batch, generated)
        gen = [(int(r["prompt_size"]), int(r["batch_size"]), int(r["token_size"])) for r in csv.DictReader(fh)
               if (r["model"], r["hardware"], r["tensor_parallel"]) == ("llama2-70b", "h100-80gb", "8")]
    c = measured_cost(t, get_model("llama2-70b"), h100_80g_4x8(), ReplicaConfig(8))
    for p in {r[3] for r in rows if r[4] == 1}:
        want = np.mean([r[5] for r in rows if r[3] == p and r[4] == 1])
        assert c.prefill_time(p) == pytest.approx(want, rel=1e-12)
    for b in {r[4] for r in rows}:
        want = np.mean([r[6] for r in rows if r[4] == b])
        ctx = np.mean([b * (p + g / 2) for p, bb, g in gen if bb == b])  # the measured context
        assert c.decode_time(b, ctx) == pytest.approx(want, rel=1e-12)


def test_measured_gains_the_roofline_context_term_hand_computed(real_data):
    """Where the table is flat in context, each cached token read costs its KV bytes over the replica's bandwidth
    plus its attention FLOPs: 8 sequences at 4,000 tokens each vs at 500 differ by 8 x 3,500 such reads."""
    t = load_perf_table(real_data / "splitwise_sim_perf_model" / "perf_model.csv")
    m, cl = get_model("llama2-70b"), h100_80g_4x8()
    c = measured_cost(t, m, cl, ReplicaConfig(4))
    p = RooflineParams()
    per_tok = (m.kv_bytes_per_token / (4 * cl.device.memory_bandwidth * p.memory_eff)
               + 4 * m.hidden * m.num_layers / (4 * cl.device.peak_flops * p.compute_eff))
    assert c.decode_time(8, 8 * 4000) - c.decode_time(8, 8 * 500) == pytest.approx(8 * 3500 * per_tok, rel=1e-9)
    # Not negligible at a full batch of long requests: 64 x 4,000 cached tokens add 5+ ms to a ~50 ms step.
    assert c.decode_time(64, 64 * 4000) - c.decode_base(64) > 0.005
    q = 2 * m.hidden * m.num_layers / (4 * cl.device.peak_flops * p.compute_eff)
    assert c.prefill_time(4096, 2 * 2048**2) - c.prefill_time(4096, 4096**2) == pytest.approx(
        q * (2 * 2048**2 - 4096**2), rel=1e-9)  # one 4k prompt costs more attention than two 2k prompts


def test_pipelined_step_time_hand_arithmetic():
    """Stage time s = 10 ms, pp = 4: 3 steps of 4 micro-batches fill the pipe (3 x 4 x 10 + 3 x 10 ms); with only
    2 micro-batches each waits on its own previous pass (3 x 4 x 10 + 1 x 10 ms: half the stages idle)."""
    from serving.costmodel.iteration import pipelined_time

    assert pipelined_time(0.01, 4, 3, 4) == pytest.approx(0.12 + 0.03)
    assert pipelined_time(0.01, 2, 3, 4) == pytest.approx(0.12 + 0.01)
    assert pipelined_time(0.01, 8, 1, 4) == pytest.approx(0.08 + 0.03)
    assert pipelined_time(0.01, 1, 5, 1) == pytest.approx(0.05)
    # A tp2pp2 replica: one pass is TP2's step plus the stage send, and it holds 2 micro-batches, so its capacity is
    # twice that of one micro-batch engine on half its KV cache.
    from serving.costmodel.iteration import type_capacity

    m, cl = get_model("llama2-70b"), h100_80g_4x8()
    c22 = roofline_cost(m, cl, ReplicaConfig(2, 2))
    assert c22.pipeline_stages == 2
    one = dataclasses.replace(c22, pipeline_stages=1, kv_capacity_tokens=c22.kv_capacity_tokens // 2)
    assert type_capacity(c22, 500, 200, 8192).rate_rps == pytest.approx(2 * type_capacity(one, 500, 200, 8192).rate_rps)


def test_roofline_error_against_measured_within_bound(real_data):
    """Stated bound: per (model, hardware, TP, phase) mean error <= 30%, worst point <= 60%."""
    t = load_perf_table(real_data / "splitwise_sim_perf_model" / "perf_model.csv")
    errs = roofline_errors(t)
    assert len(errs) == 16
    for e in errs:
        assert e.mape <= 0.30, e
        assert e.max_ape <= 0.60, e


def test_roofline_hand_computed_decode():
    m, cl = get_model("llama2-70b"), h100_80g_4x8()
    p = RooflineParams(compute_eff=0.5, memory_eff=0.8, overhead_s=0.01)
    c = roofline_cost(m, cl, ReplicaConfig(1, 2), p)  # pp 2, no TP: only one activation send
    flops = 2 * m.params_per_layer * m.num_layers
    act = m.hidden * 2
    send = cl.intra_latency + act / cl.intra_bw
    want = 0.01 + m.weight_bytes / (cl.device.memory_bandwidth * 0.8) + flops / (cl.device.peak_flops * 0.5) + send
    assert c.decode_time(1, 0) == pytest.approx(want, rel=1e-9)
    per_ctx = m.kv_bytes_per_token / (cl.device.memory_bandwidth * 0.8) + 4 * m.hidden * m.num_layers / (cl.device.peak_flops * 0.5)
    assert c.decode_time(1, 1000) - c.decode_time(1, 0) == pytest.approx(1000 * per_ctx, rel=1e-9)
    # More TP: faster decode step, more KV capacity per replica.
    c4 = roofline_cost(m, cl, ReplicaConfig(4), p)
    assert c4.decode_time(8, 8000) < roofline_cost(m, cl, ReplicaConfig(2), p).decode_time(8, 8000)
    assert c4.kv_capacity_tokens > c.kv_capacity_tokens


def test_model_that_does_not_fit_fails_clearly():
    one = h100_80g_4x8().with_shape(1, 1)
    cm = CostModel(get_model("llama2-70b"), one)
    with pytest.raises(ValueError, match="does not fit"):
        cm.min_gpus()
    assert CostModel(get_model("tiny-llama"), one).min_gpus() == 1


def test_bad_configs_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        get_model("gpt-5")
    with pytest.raises(ValueError, match="not a CostModelKind"):
        CostModel(get_model("opt-30b"), h100_80g_4x8(), kind="magic")
    t = load_perf_table(_table(tmp_path))
    with pytest.raises(ValueError, match="has TP \\[4\\]"):
        measured_cost(t, get_model("llama2-70b"), a100_80g_4x8(), ReplicaConfig(2))
    with pytest.raises(ValueError, match="exceeds"):
        roofline_cost(get_model("opt-30b"), h100_80g_4x8(), ReplicaConfig(16))
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "llama2-70b,a100-80gb,x,1,128,1,1,1,1,0,4\n")
    with pytest.raises(ValueError, match="bad.csv:2"):
        load_perf_table(bad)


def test_all_paper_models_have_configs():
    for name in ("llama2-70b", "opt-30b", "opt-66b", "llama-30b"):
        cm = CostModel(get_model(name), h100_80g_4x8())
        g = cm.min_gpus()
        assert g in (1, 2, 4) and cm.configs(g)
