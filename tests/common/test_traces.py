"""Trace loaders on the real files, on synthetic files, and on every kind of bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from common import synthetic
from common.traces import (
    ExpertLoadTrace,
    RequestTrace,
    TraceError,
    load_azure_trace,
    load_csv_trace,
    load_expert_trace,
    load_mooncake_trace,
    load_request_trace,
)

AZURE = "azure_llm_inference_2023/AzureLLMInferenceTrace_{}.csv"


# ---------------------------------------------------------------------------------------------------------------- real


@pytest.mark.data
@pytest.mark.parametrize(
    "name, rows, span_s, mean_in, mean_out",
    [("code", 8819, 3436, 2048, 28), ("conv", 19366, 3502, 1155, 211)],  # figures from the data README
)
def test_azure_real(data_path, name, rows, span_s, mean_in, mean_out):
    tr = load_azure_trace(data_path(AZURE.format(name)))
    assert len(tr) == rows
    assert tr.arrival_s[0] == 0.0 and np.all(np.diff(tr.arrival_s) >= 0)
    assert round(tr.duration_s) == span_s
    assert round(tr.input_tokens.mean()) == mean_in and round(tr.output_tokens.mean()) == mean_out


@pytest.mark.data
def test_azure_real_first_rows(data_path):
    """The first arrivals against the file's first rows, read by hand: 18:17:03.9799600, 18:17:04.0319600."""
    tr = load_azure_trace(data_path(AZURE.format("code")))
    assert tr.arrival_s[1] == pytest.approx(0.052, abs=1e-9)
    assert tr.input_tokens[:2].tolist() == [4808, 3180] and tr.output_tokens[:2].tolist() == [10, 8]


@pytest.mark.data
def test_expert_npz_real(data_path):
    tr = load_expert_trace(data_path(synthetic.EXPERT_NPZ))
    assert tr.counts.shape == (501, 16, 24, 4, 32) and tr.counts.dtype == np.int64
    assert (tr.num_iterations, tr.num_ranks, tr.num_layers, tr.num_microbatches, tr.num_experts) == (501, 16, 24, 4, 32)
    assert np.all(tr.counts.sum(axis=-1) == 4096)  # 2,048 tokens x top-2 in every 32-vector
    np.testing.assert_array_equal(tr.iterations, np.arange(1, 5002, 10))
    m = tr.merge_ranks(8)
    assert m.counts.shape == (501, 8, 24, 4, 32) and np.all(m.counts.sum(axis=-1) == 8192)


# ----------------------------------------------------------------------------------------------------------- synthetic


@pytest.fixture(scope="module")
def expert():
    return synthetic.synthetic_expert_trace(synthetic.ExpertTraceSpec(num_iterations=6, num_ranks=4), seed=3)


@pytest.fixture(scope="module")
def requests():
    return synthetic.synthetic_request_trace(300, rate_rps=3.0, seed=5)[0]


def test_expert_npz_roundtrip(tmp_path, expert):
    spec = synthetic.ExpertTraceSpec()
    assert np.all(expert.counts.sum(-1) == spec.tokens_per_microbatch * spec.top_k)
    back = load_expert_trace(synthetic.write_expert_npz(expert, tmp_path / "t.npz"))
    np.testing.assert_array_equal(back.counts, expert.counts)
    np.testing.assert_array_equal(back.iterations, expert.iterations)
    assert str(tmp_path / "t.npz") == back.source


def test_synthetic_is_deterministic_and_skewed():
    spec = synthetic.ExpertTraceSpec(skew=2.0)
    a, b = synthetic.synthetic_expert_trace(spec, seed=1), synthetic.synthetic_expert_trace(spec, seed=1)
    np.testing.assert_array_equal(a.counts, b.counts)
    assert not np.array_equal(a.counts, synthetic.synthetic_expert_trace(spec, seed=2).counts)
    per_expert = a.counts.sum(axis=(0, 1, 3))  # [L, E]
    assert np.all(per_expert.max(-1) / per_expert.mean(-1) > 1.5)


def test_merge_ranks_matches_loop(expert):
    m = expert.merge_ranks(2)
    for j in range(2):
        np.testing.assert_array_equal(m.counts[:, j], expert.counts[:, 2 * j] + expert.counts[:, 2 * j + 1])
    np.testing.assert_array_equal(expert.merge_ranks(1).counts[:, 0], expert.counts.sum(axis=1))
    np.testing.assert_array_equal(expert.merge_ranks(4).counts, expert.counts)
    for bad in (3, 0, -2, 8):
        with pytest.raises(ValueError, match="positive divisor of 4"):
            expert.merge_ranks(bad)


def test_expert_trace_validation():
    c = np.ones((2, 1, 1, 1, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="shape"):
        ExpertLoadTrace(c[0], np.arange(2))
    with pytest.raises(ValueError, match="one per sample"):
        ExpertLoadTrace(c, np.arange(3))
    with pytest.raises(ValueError, match="increase strictly"):
        ExpertLoadTrace(c, np.array([5, 5]))
    with pytest.raises(ValueError, match="negative count -1"):
        ExpertLoadTrace(c * -1, np.arange(2))
    with pytest.raises(ValueError, match="whole numbers"):
        ExpertLoadTrace(c * 0.5, np.arange(2))


def test_traces_are_frozen(expert, requests):
    with pytest.raises(dataclasses.FrozenInstanceError):
        requests.arrival_s = np.zeros(3)
    with pytest.raises(ValueError):
        requests.input_tokens[0] = 7
    with pytest.raises(ValueError):
        expert.counts[0, 0, 0, 0, 0] = 7
    src = np.arange(3, dtype=np.float64)
    tr = RequestTrace(src, [1, 2, 3], [1, 1, 1])
    src[0] = 9.0  # the caller's array stays the caller's
    assert tr.arrival_s[0] == 0.0


def _same(a: RequestTrace, b: RequestTrace, atol=1e-6):
    np.testing.assert_allclose(a.arrival_s, b.arrival_s, rtol=0, atol=atol)
    np.testing.assert_array_equal(a.input_tokens, b.input_tokens)
    np.testing.assert_array_equal(a.output_tokens, b.output_tokens)


def test_azure_roundtrip(tmp_path, requests):
    p = synthetic.write_azure_csv(requests, tmp_path / "a.csv")
    assert p.read_text().splitlines()[1].split(",")[0] == "2023-11-16 18:00:00.0000000"
    _same(load_azure_trace(p), requests)
    _same(load_request_trace(p, "azure"), requests)


def test_mooncake_roundtrip(tmp_path, requests):
    p = synthetic.write_mooncake_jsonl(requests, tmp_path / "m.jsonl")
    assert "hash_ids" in json.loads(p.read_text().splitlines()[0])
    _same(load_mooncake_trace(p), requests)
    _same(load_request_trace(p, "mooncake"), requests)


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_csv_roundtrip(tmp_path, requests, unit):
    p = synthetic.write_csv_trace(requests, tmp_path / "g.csv", "t", "prompt", "gen", time_unit=unit)
    _same(load_csv_trace(p, "t", "prompt", "gen", time_unit=unit), requests)
    _same(load_request_trace(p, "csv", time_col="t", input_col="prompt", output_col="gen", time_unit=unit), requests)


def test_csv_times_rebased_to_first_row(tmp_path):
    p = tmp_path / "g.csv"
    p.write_text('ts,in,out\n1500,10,1\n"2000",20,2\n4500,30,3\n')
    tr = load_csv_trace(p, "ts", "in", "out", time_unit="ms")
    np.testing.assert_allclose(tr.arrival_s, [0.0, 0.5, 3.0])
    assert tr.input_tokens.tolist() == [10, 20, 30]


def test_request_trace_ops():
    tr = RequestTrace([0.0, 1.0, 2.0, 2.0, 5.0], [1, 2, 3, 4, 5], [5, 4, 3, 2, 1], "x")
    assert len(tr) == 5 and tr.duration_s == 5.0
    s = tr.slice(1.5, 5.0)
    np.testing.assert_allclose(s.arrival_s, [0.5, 0.5])  # re-based to the window start, t1 excluded
    assert s.input_tokens.tolist() == [3, 4] and s.duration_s == 0.5
    assert len(tr.slice(6.0, 9.0)) == 0 and tr.slice(6.0, 9.0).duration_s == 0.0
    f = tr.scale_rate(2.0)
    np.testing.assert_allclose(np.diff(f.arrival_s), np.diff(tr.arrival_s) / 2.0)
    assert f.duration_s == 2.5 and f.output_tokens.tolist() == tr.output_tokens.tolist()
    np.testing.assert_allclose(tr.scale_rate(np.int64(4)).arrival_s, tr.arrival_s / 4)
    for bad in (0, -1.0, float("inf"), "fast", None):
        with pytest.raises(ValueError, match="factor"):
            tr.scale_rate(bad)
    with pytest.raises(ValueError, match="t0 <= t1"):
        tr.slice(3.0, 1.0)
    with pytest.raises(ValueError, match="decreases"):
        RequestTrace([1.0, 0.5], [1, 1], [1, 1])
    with pytest.raises(ValueError, match="negative output_tokens"):
        RequestTrace([0.0, 0.5], [1, 1], [1, -1])
    with pytest.raises(ValueError, match="one length"):
        RequestTrace([0.0, 0.5], [1], [1, 1])


# ------------------------------------------------------------------------------------------------------------ bad input

HDR = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
OK1 = "2023-11-16 18:17:03.9799600,4808,10\n"
OK2 = "2023-11-16 18:17:04.0319600,3180,8\n"

AZURE_BAD = [
    ("columns", HDR + OK1 + "2023-11-16 18:17:04.0319600,3180\n", 3, "expected 3 columns, got 2"),
    ("non-numeric", HDR + OK1 + "2023-11-16 18:17:04.0319600,abc,8\n", 3, "ContextTokens 'abc' is not an integer"),
    ("float length", HDR + OK1 + OK2 + "2023-11-16 18:17:05.0000000,12,8.5\n", 4, "GeneratedTokens '8.5'"),
    ("negative", HDR + OK1 + "2023-11-16 18:17:04.0319600,3180,-8\n", 3, "negative GeneratedTokens -8"),
    ("unsorted", HDR + OK2 + OK1, 3, "earlier than the previous row's (line 2)"),
    ("missing timestamp", HDR + OK1 + ",3180,8\n", 3, "missing timestamp"),
    ("garbled timestamp", HDR + OK1 + "yesterday,3180,8\n", 3, "is not a timestamp"),
    ("impossible date", HDR + OK1 + "2023-13-45 18:17:04.0319600,3180,8\n", 3, "invalid timestamp"),
    ("blank row", HDR + OK1 + "\n" + OK2, 3, "empty row"),
    ("zero bytes", "", 1, "empty file"),
    ("header only", HDR, 2, "no data rows"),
    (
        "missing column",
        "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.9799600,4808\n",
        1,
        "missing column(s) ['GeneratedTokens']",
    ),
]


@pytest.mark.parametrize("case, text, line, reason", AZURE_BAD, ids=[c[0] for c in AZURE_BAD])
def test_azure_bad_input(tmp_path, case, text, line, reason):
    p = tmp_path / "bad_azure.csv"
    p.write_text(text)
    with pytest.raises(TraceError) as err:
        load_azure_trace(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}:{line}: "), msg
    assert reason in msg
    assert err.value.line == line and err.value.path == str(p)


def test_every_bad_row_is_reported(tmp_path):
    p = tmp_path / "many.csv"
    bad = "2023-11-16 18:17:04.0319600,x,8\n"
    p.write_text(HDR + OK1 + bad + OK2 + bad + "2023-11-16 18:17:05,1,-1\n")
    with pytest.raises(TraceError) as err:
        load_azure_trace(p)
    assert [ln for ln, _ in err.value.problems] == [3, 5, 6]
    for ln in (3, 5, 6):
        assert f"{p}:{ln}: " in str(err.value)


def test_many_bad_rows_are_summarised(tmp_path):
    p = tmp_path / "worse.csv"
    p.write_text(HDR + "".join(f"2023-11-16 18:17:{i:02d},1,-{i}\n" for i in range(1, 31)))
    with pytest.raises(TraceError) as err:
        load_azure_trace(p)
    assert len(err.value.problems) == 30 and "and 20 more bad rows" in str(err.value)


def test_impossible_dates_all_reported(tmp_path):
    p = tmp_path / "dates.csv"
    p.write_text(HDR + OK1 + "2023-02-30 00:00:00,1,1\n" + OK2 + "2023-11-16 25:00:00,1,1\n")
    with pytest.raises(TraceError) as err:
        load_azure_trace(p)
    assert [ln for ln, _ in err.value.problems] == [3, 5]


def _mc(ts, i=10, o=5, **extra):
    return json.dumps({"timestamp": ts, "input_length": i, "output_length": o, **extra}) + "\n"


MOONCAKE_BAD = [
    ("bad json", _mc(0) + '{"timestamp": 5, "input_length": \n', 2, "not valid JSON"),
    ("not an object", _mc(0) + "[1, 2, 3]\n", 2, "expected a JSON object"),
    ("missing timestamp", _mc(0) + json.dumps({"input_length": 1, "output_length": 1}) + "\n", 2, "missing timestamp"),
    ("null timestamp", _mc(0) + _mc(None), 2, "missing timestamp"),
    ("missing key", _mc(0) + json.dumps({"timestamp": 9, "input_length": 1}) + "\n", 2, "missing key 'output_length'"),
    ("non-numeric", _mc(0) + _mc(5, i="many"), 2, "input_length 'many' is not an integer"),
    ("negative", _mc(0) + _mc(5) + _mc(6, o=-3), 3, "negative output_length -3"),
    ("unsorted", _mc(100) + _mc(50), 2, "earlier than the previous row's (line 1)"),
    ("blank line", _mc(0) + "\n" + _mc(1), 2, "empty line"),
    ("zero bytes", "", 1, "empty file"),
]


@pytest.mark.parametrize("case, text, line, reason", MOONCAKE_BAD, ids=[c[0] for c in MOONCAKE_BAD])
def test_mooncake_bad_input(tmp_path, case, text, line, reason):
    p = tmp_path / "bad_mooncake.jsonl"
    p.write_text(text)
    with pytest.raises(TraceError) as err:
        load_mooncake_trace(p)
    assert str(err.value).startswith(f"{p}:{line}: "), str(err.value)
    assert reason in str(err.value)


def test_mooncake_ignores_other_keys(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text(_mc(1000, 7, 3, hash_ids=[1, 2]) + _mc(3500.5, 8, 4, extra="x"))
    tr = load_mooncake_trace(p)
    np.testing.assert_allclose(tr.arrival_s, [0.0, 2.5005])
    assert tr.input_tokens.tolist() == [7, 8] and tr.output_tokens.tolist() == [3, 4]


CSV_BAD = [
    ("nan time", "t,i,o\n0,1,1\nnan,1,1\n", 3, "is not a finite number"),
    ("text time", "t,i,o\n0,1,1\nnoon,1,1\n", 3, "'noon' is not a finite number"),
    ("missing column", "t,i\n0,1\n", 1, "missing column(s) ['o']"),
    ("columns", "t,i,o\n0,1,1\n1,2,3,4\n", 3, "expected 3 columns, got 4"),
    ("unsorted", "t,i,o\n5,1,1\n4,1,1\n", 3, "earlier than the previous row's"),
]


@pytest.mark.parametrize("case, text, line, reason", CSV_BAD, ids=[c[0] for c in CSV_BAD])
def test_csv_bad_input(tmp_path, case, text, line, reason):
    p = tmp_path / "bad_generic.csv"
    p.write_text(text)
    with pytest.raises(TraceError) as err:
        load_csv_trace(p, "t", "i", "o")
    assert str(err.value).startswith(f"{p}:{line}: "), str(err.value)
    assert reason in str(err.value)


def test_missing_files_name_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "trace.csv"
    for load in (load_azure_trace, load_mooncake_trace, load_expert_trace):
        with pytest.raises(FileNotFoundError, match=str(missing)):
            load(missing)


def test_bad_npz(tmp_path):
    p = tmp_path / "not.npz"
    p.write_bytes(b"not a zip at all")
    with pytest.raises(TraceError, match=f"{p}: not a readable npz"):
        load_expert_trace(p)
    q = tmp_path / "partial.npz"
    np.savez(q, counts=np.ones((2, 1, 1, 1, 3), dtype=np.uint16))
    with pytest.raises(TraceError, match=r"missing array\(s\) \['iterations'\]"):
        load_expert_trace(q)
    r = tmp_path / "shape.npz"
    np.savez(r, counts=np.ones((2, 3), dtype=np.uint16), iterations=np.arange(2))
    with pytest.raises(TraceError, match=f"{r}: .*shape"):
        load_expert_trace(r)


def test_bad_arguments(tmp_path, requests):
    p = synthetic.write_azure_csv(requests, tmp_path / "a.csv")
    with pytest.raises(ValueError, match="format must be one of"):
        load_request_trace(p, "parquet")
    with pytest.raises(ValueError, match="only applies to format 'csv'"):
        load_request_trace(p, "azure", time_col="x")
    with pytest.raises(ValueError, match="time_unit"):
        load_csv_trace(p, "TIMESTAMP", "ContextTokens", "GeneratedTokens", time_unit="minutes")


def test_window_sum_and_microbatch_follow_the_iteration_major_sequence():
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 50, size=(5, 3, 2, 4, 6))  # [I, R, L, M, E]
    trace = ExpertLoadTrace(counts, np.arange(5) * 10)
    seq = [(i, m) for i in range(5) for m in range(4)]  # position t -> (iteration, micro-batch), written out
    for layer in range(2):
        for t, (i, m) in enumerate(seq):
            assert np.array_equal(trace.microbatch(layer, t), counts[i, :, layer, m])
            for window in range(t + 1):
                want = sum((counts[a, :, layer, b] for a, b in seq[t - window:t]), np.zeros((3, 6), dtype=np.int64))
                got = trace.window_sum(layer, t, window)
                assert got.dtype == np.int64 and np.array_equal(got, want)
    with pytest.raises(ValueError, match="window"):
        trace.window_sum(0, 2, 3)  # only 2 micro-batches precede position 2
    with pytest.raises(ValueError, match="outside"):
        trace.microbatch(0, 20)
