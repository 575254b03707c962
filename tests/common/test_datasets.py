"""Data manifest, verification, download (from a local file:// mirror) and the SmartMoE raw-log converter."""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from common import datasets as ds
from common import synthetic
from common.traces import TraceError, load_expert_trace

REPO = Path(__file__).resolve().parents[2]


def test_manifest_is_well_formed():
    paths = [e.path for e in ds.MANIFEST] + [ds.SMARTMOE.path]
    assert len(paths) == len(set(paths))
    for e in ds.MANIFEST:
        assert re.fullmatch(r"[0-9a-f]{64}", e.sha256) and e.licence
        if e.repo is None:
            assert e.url() is None and e.note
        else:
            assert re.fullmatch(r"[0-9a-f]{40}", e.commit)
            assert e.url() == f"https://raw.githubusercontent.com/{e.repo}/{e.commit}/{e.upstream_path}"
    s = ds.SMARTMOE
    assert len(s.iterations) == 501 and s.iterations[0] == 1 and s.iterations[-1] == 5001
    assert len(s.iterations) * s.num_ranks == 8016
    assert s.raw_url(11, 3) == (
        "https://raw.githubusercontent.com/thu-pacman/SmartMoE-AE/"
        "e19b3a994db5f7614778fd02c48f602ba9d9ac6e/moe_trace/table_iter11_rank3.log"
    )


@pytest.mark.data
def test_real_files_match_manifest(data_dir):
    for e in ds.MANIFEST:
        if not (data_dir / e.path).is_file():
            continue  # a partial data directory: the present files must still verify
        assert ds.verify_file(data_dir, e).status == "ok", e.path
    if not (data_dir / ds.SMARTMOE.path).is_file():
        pytest.skip("no SmartMoE npz in the data directory")
    assert ds.verify_converted(data_dir).status == "ok"
    if (data_dir / ds.SMARTMOE.long_csv_path).is_file():
        assert ds.verify_long_csv(data_dir).status == "ok"


@pytest.mark.data
def test_script_reports_verified_data_dir(data_dir, capsys):
    if not all((data_dir / e.path).is_file() for e in ds.MANIFEST) or not (data_dir / ds.SMARTMOE.path).is_file():
        pytest.skip("the data directory is incomplete; the script would try to download")
    spec = importlib.util.spec_from_file_location("download_data", REPO / "scripts" / "download_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--data-dir", str(data_dir)]) == 0
    assert "all files present and verified" in capsys.readouterr().out


def test_hashes():
    assert ds.counts_sha256(np.array([1, 2], dtype=np.int64)) == hashlib.sha256(b"\x01\x00\x02\x00").hexdigest()
    with pytest.raises(ValueError, match="uint16"):
        ds.counts_sha256(np.array([70000]))


def test_verify_file_states(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_bytes(b"hello")
    good = ds.DataFile("a/f.txt", hashlib.sha256(b"hello").hexdigest(), "MIT")
    assert ds.verify_file(tmp_path, good).status == "ok"
    bad = replace(good, sha256="0" * 64)
    check = ds.verify_file(tmp_path, bad)
    assert check.status == "mismatch" and check.actual == good.sha256
    assert ds.verify_file(tmp_path, replace(good, path="a/none.txt")).status == "missing"


def test_download_verifies(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 200_000)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    seen = []
    out = ds.download(src.as_uri(), tmp_path / "out" / "f.bin", digest, progress=seen.append)
    assert out.read_bytes() == src.read_bytes() and sum(seen) == 200_000
    with pytest.raises(ds.ChecksumMismatch, match="not written"):
        ds.download(src.as_uri(), tmp_path / "out" / "g.bin", "f" * 64)
    assert not (tmp_path / "out" / "g.bin").exists() and not (tmp_path / "out" / "g.bin.part").exists()
    with pytest.raises(OSError):
        ds.download((tmp_path / "absent").as_uri(), tmp_path / "out" / "h.bin")


@pytest.fixture()
def small_trace():
    spec = synthetic.ExpertTraceSpec(num_iterations=3, num_ranks=2, num_layers=3, num_microbatches=2, num_experts=4)
    return synthetic.synthetic_expert_trace(spec, seed=4)


def _spec_for(trace, **kw):
    fields = dict(
        counts_sha256=ds.counts_sha256(trace.counts),
        iterations=tuple(int(i) for i in trace.iterations),
        num_ranks=trace.num_ranks,
        num_layers=trace.num_layers,
        num_microbatches=trace.num_microbatches,
        num_experts=trace.num_experts,
        long_csv_path="moe/long.csv.gz",
        long_csv_sha256=hashlib.sha256(ds.long_csv_bytes(trace.counts, trace.iterations)).hexdigest(),
    )
    return replace(ds.SMARTMOE, **{**fields, **kw})


def test_converter_roundtrip(tmp_path, small_trace):
    spec = _spec_for(small_trace)
    files = synthetic.write_smartmoe_raw_logs(small_trace, tmp_path / "raw")
    assert len(files) == 6 and files[0].read_text().startswith("0:[[")
    counts = ds.convert_raw_logs(tmp_path / "raw", spec)
    np.testing.assert_array_equal(counts, small_trace.counts)
    assert ds.counts_sha256(counts) == spec.counts_sha256
    npz = ds.write_counts_npz(counts, spec, tmp_path / "d" / "t.npz")
    back = load_expert_trace(npz)
    np.testing.assert_array_equal(back.counts, small_trace.counts)
    np.testing.assert_array_equal(back.iterations, small_trace.iterations)
    files[-1].unlink()
    with pytest.raises(FileNotFoundError, match="1 raw logs missing"):
        ds.convert_raw_logs(tmp_path / "raw", spec)


ROW = "[[1.0, 2.0], [3.0, 4.0]]"
RAW_BAD = [
    ("too few lines", f"0:{ROW}\n", 1, "expected 2 lines"),
    ("wrong layer", f"0:{ROW}\n5:{ROW}\n", 2, "start with '1:'"),
    ("bad json", f"0:{ROW}\n1:[[1.0, 2.0], [3.0\n", 2, "not a JSON list"),
    ("wrong shape", f"0:{ROW}\n1:[[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]]\n", 2, "got shape (2, 3)"),
    ("fraction", f"0:[[1.5, 2.0], [3.0, 4.0]]\n1:{ROW}\n", 1, "whole numbers"),
]


@pytest.mark.parametrize("case, text, line, reason", RAW_BAD, ids=[c[0] for c in RAW_BAD])
def test_parse_raw_log_errors(tmp_path, case, text, line, reason):
    p = tmp_path / "table_iter1_rank0.log"
    p.write_text(text)
    with pytest.raises(TraceError) as err:
        ds.parse_raw_log(p, 2, 2, 2)
    assert str(err.value).startswith(f"{p}:{line}: ") and reason in str(err.value)


def _mirror(root: Path, entries, smartmoe, trace):
    """Lay out files as raw.githubusercontent.com would serve them: {repo}/{commit}/{path}."""
    for e, content in entries:
        p = root / e.repo / e.commit / e.upstream_path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    synthetic.write_smartmoe_raw_logs(trace, root / smartmoe.repo / smartmoe.commit / smartmoe.raw_dir)


def test_sync_end_to_end(tmp_path, small_trace):
    body = b"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,1,2\n"
    entry = ds.DataFile(
        "azure/x.csv",
        hashlib.sha256(body).hexdigest(),
        "CC-BY-4.0",
        repo="o/r",
        commit="c" * 40,
        upstream_path="d/x.csv",
    )
    manual = ds.DataFile("paper/y.csv", "0" * 64, "Apache-2.0", note="copy it by hand")
    spec = _spec_for(small_trace, repo="o/s", commit="d" * 40, path="moe/counts.npz")
    mirror = tmp_path / "mirror"
    _mirror(mirror, [(entry, body)], spec, small_trace)
    data, base, logs = tmp_path / "data", mirror.as_uri(), []

    problems = ds.sync(data, [entry, manual], spec, base=base, workers=2, log=logs.append)
    assert len(problems) == 1 and "paper/y.csv: missing; copy it by hand" in problems[0]
    assert (data / "azure/x.csv").read_bytes() == body
    np.testing.assert_array_equal(load_expert_trace(data / spec.path).counts, small_trace.counts)
    assert not list((data / "moe" / "raw").rglob("*.log"))  # raw logs removed after a verified conversion
    assert ds.verify_long_csv(data, spec).status == "ok"
    with gzip.open(data / "moe/long.csv.gz", "rt", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["iteration", "layer", "expert", "tokens"] and len(rows) == 1 + 3 * 3 * 4
    i, layer, e = 2, 1, 3  # row of (third iteration, layer 1, expert 3)
    assert int(rows[1 + (i * 3 + layer) * 4 + e][3]) == small_trace.counts[i, :, layer, :, e].sum()

    # Present and verified: nothing is fetched again (the mirror is gone).
    for p in sorted(mirror.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    logs.clear()
    assert ds.sync(data, [entry], spec, base=base, log=logs.append) == []
    assert all(line.startswith("ok") for line in logs)

    # A changed file is reported and left alone.
    (data / "azure/x.csv").write_bytes(b"edited")
    problems = ds.sync(data, [entry], None, base=base, log=logs.append)
    assert "differs from the published" in problems[0] and (data / "azure/x.csv").read_bytes() == b"edited"


def test_sync_refuses_corrupt_downloads(tmp_path, small_trace):
    entry = ds.DataFile("x.csv", "0" * 64, "MIT", repo="o/r", commit="c" * 40, upstream_path="x.csv")
    spec = _spec_for(small_trace, repo="o/s", commit="d" * 40, path="moe/counts.npz", counts_sha256="1" * 64)
    mirror = tmp_path / "mirror"
    _mirror(mirror, [(entry, b"tampered")], spec, small_trace)
    problems = ds.sync(tmp_path / "data", [entry], spec, base=mirror.as_uri(), log=lambda s: None)
    assert len(problems) == 2
    assert "download failed" in problems[0] and not (tmp_path / "data" / "x.csv").exists()
    assert "not written" in problems[1] and not (tmp_path / "data" / spec.path).exists()
    # The raw logs stay, so a corrected manifest can convert them without fetching again.
    assert len(list((tmp_path / "data" / "moe" / "raw").rglob("*.log"))) == 6


def test_sync_resumes_after_a_failed_raw_download(tmp_path, small_trace):
    spec = _spec_for(small_trace, repo="o/s", commit="d" * 40, path="moe/counts.npz")
    mirror = tmp_path / "mirror"
    _mirror(mirror, [], spec, small_trace)
    gone = mirror / spec.repo / spec.commit / spec.raw_dir / spec.raw_name(21, 1)
    kept = gone.read_bytes()
    gone.unlink()
    data = tmp_path / "data"
    problems = ds.sync(data, [], spec, base=mirror.as_uri(), workers=1, log=lambda s: None)
    assert len(problems) == 1 and "could not build from the raw logs" in problems[0]
    assert not (data / spec.path).exists()
    gone.write_bytes(kept)
    (mirror / spec.repo / spec.commit / spec.raw_dir / spec.raw_name(1, 0)).unlink()  # already fetched: not needed
    assert ds.sync(data, [], spec, base=mirror.as_uri(), workers=1, log=lambda s: None) == []
    np.testing.assert_array_equal(load_expert_trace(data / spec.path).counts, small_trace.counts)
