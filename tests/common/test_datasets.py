"""Data manifest, verification, downloads (file:// mirror and a local HTTP server), the SmartMoE raw-log converter."""

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
from tests.common import mirror

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


# ---------------------------------------------------------------------------------------------------------------------
# Over HTTP, from a local mirror server (tests/common/mirror.py): resume, Range ignored, corrupt bytes, server down
# ---------------------------------------------------------------------------------------------------------------------


def test_manifest_names_a_source_for_every_file():
    assert all(e.url() is not None for e in ds.MANIFEST)  # `make data` can fetch everything it lists
    laer = [e for e in ds.MANIFEST if e.path.startswith("laer_moe_paper_results/")]
    assert len(laer) == 6
    for e in laer:
        assert (e.repo, e.commit, e.licence) == ("Fizzmy/LAER-MoE-AE", "72db5b79c00b4e6cf523a0d0c0a23cd44defc3df", "Apache-2.0")
        assert e.upstream_path == f"LAER-MoE/scripts_ae/{Path(e.path).name}"


def _payloads() -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    return {"a/one.bin": rng.bytes(150_000), "b/two.bin": rng.bytes(70_000), "b/three.csv": b"x,y\n1,2\n"}


def _load_script():
    spec = importlib.util.spec_from_file_location("download_data", REPO / "scripts" / "download_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_make_data_fetches_everything_over_http(tmp_path, small_trace, capsys):
    files = _payloads()
    root = tmp_path / "mirror"
    entries = mirror.build_mirror(root, files)
    spec = _spec_for(small_trace, repo="o/s", commit="d" * 40, path="moe/counts.npz")
    mirror.add_smartmoe(root, small_trace, spec)
    data = tmp_path / "data"
    with mirror.Mirror(root) as m:
        rc = _load_script().main(["--data-dir", str(data), "--mirror", m.url, "--workers", "2"], {}, entries, spec)
    assert rc == 0 and "all files present and verified" in capsys.readouterr().out
    for name, content in files.items():
        assert (data / name).read_bytes() == content
    np.testing.assert_array_equal(load_expert_trace(data / spec.path).counts, small_trace.counts)
    assert ds.verify_long_csv(data, spec).status == "ok"
    assert not list(data.rglob("*.part"))


def test_interrupted_download_resumes_with_range(tmp_path):
    content = np.random.default_rng(1).bytes(200_000)
    root, data = tmp_path / "mirror", tmp_path / "data"
    (entry,) = mirror.build_mirror(root, {"big.bin": content})
    part = data / "big.bin.part"
    with mirror.Mirror(root) as m:
        m.served.cut[m.url_path(entry)] = 80_000
        problems = ds.sync(data, [entry], None, base=m.url, progress=False)
        assert len(problems) == 1 and "rerun to resume" in problems[0] and "\n" not in problems[0]
        assert part.read_bytes() == content[:80_000] and not (data / "big.bin").exists()

        assert ds.sync(data, [entry], None, base=m.url, progress=False) == []
        (first, second) = m.gets(entry)
    assert first[2] is None and second[2] == "bytes=80000-" and second[3] == 120_000  # only the rest was sent
    assert (data / "big.bin").read_bytes() == content and not part.exists()


def test_resume_when_the_server_ignores_range(tmp_path):
    content = np.random.default_rng(2).bytes(100_000)
    root, data = tmp_path / "mirror", tmp_path / "data"
    (entry,) = mirror.build_mirror(root, {"f.bin": content})
    with mirror.Mirror(root) as m:
        m.served.cut[m.url_path(entry)] = 30_000
        assert len(ds.sync(data, [entry], None, base=m.url, progress=False)) == 1
        m.served.ignore_range = True
        assert ds.sync(data, [entry], None, base=m.url, progress=False) == []
        last = m.gets(entry)[-1]
    assert last[2] == "bytes=30000-" and last[3] == 100_000  # asked to resume, got the whole file: started over
    assert (data / "f.bin").read_bytes() == content


def test_stale_part_is_fetched_again(tmp_path):
    content = np.random.default_rng(3).bytes(50_000)
    root, data = tmp_path / "mirror", tmp_path / "data"
    (entry,) = mirror.build_mirror(root, {"f.bin": content})
    data.mkdir()
    (data / "f.bin.part").write_bytes(b"left over from another version of the file")
    with mirror.Mirror(root) as m:
        assert ds.sync(data, [entry], None, base=m.url, progress=False) == []
        ranges = [r[2] for r in m.gets(entry)]
    assert ranges[0] is not None and ranges[1] is None  # the resumed bytes failed the sha256: one fresh download
    assert (data / "f.bin").read_bytes() == content


def test_checksum_mismatch_never_replaces_a_file(tmp_path):
    good = b"the published bytes\n"
    root, data = tmp_path / "mirror", tmp_path / "data"
    (entry,) = mirror.build_mirror(root, {"f.csv": good})
    served = root / entry.repo / entry.commit / entry.upstream_path
    served.write_bytes(b"altered upstream\n")
    with mirror.Mirror(root) as m:
        problems = ds.sync(data, [entry], None, base=m.url, progress=False)
        assert len(problems) == 1 and "differs from the recorded" in problems[0] and "not written" in problems[0]
        assert not (data / "f.csv").exists() and not (data / "f.csv.part").exists()
        # A good file already in place is never replaced by bytes that fail the check.
        (data / "f.csv").write_bytes(good)
        with pytest.raises(ds.ChecksumMismatch, match="not written"):
            ds.download(entry.url(m.url), data / "f.csv", entry.sha256)
    assert (data / "f.csv").read_bytes() == good and not (data / "f.csv.part").exists()


def test_server_down_gives_one_line_per_file(tmp_path, small_trace, capsys):
    import time

    entries = mirror.build_mirror(tmp_path / "mirror", _payloads())
    spec = _spec_for(small_trace, repo="o/s", commit="d" * 40, path="moe/counts.npz")
    base, data = mirror.closed_port_url(), tmp_path / "data"
    t0 = time.perf_counter()
    rc = _load_script().main(["--data-dir", str(data), "--mirror", base], {}, entries, spec)
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    lines = err[err.index("4 problem(s):"):].strip().splitlines()  # after the progress bars
    assert rc == 1 and len(lines) == 5
    for line, name in zip(lines[1:], [e.path for e in entries] + [spec.path]):
        assert str(data / name) in line and f"{base} did not answer" in line
    assert elapsed < 10  # one refused probe, not a wait per file
