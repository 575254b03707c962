"""Manifest of the public data the project uses, and the download / verify / convert steps behind `make data`.

Every file is fetched from a pinned commit of its upstream repository and checked against a sha256 recorded here.
The SmartMoE expert trace is published as 8,016 small text logs; we fetch those and convert them into our npz layout,
then check the sha256 of the converted `counts` array (the npz container's own bytes depend on the zip writer).

Notation: I sampled iterations, R ranks, L layers, M micro-batches, E experts.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import logging
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.traces import TraceError

GITHUB_RAW = "https://raw.githubusercontent.com"
_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataFile:
    """One file of the data directory, byte-identical to an upstream file at a pinned commit."""

    path: str  # relative to the data directory
    sha256: str  # of the file's bytes
    licence: str  # SPDX-like name of the upstream licence
    repo: str | None = None  # GitHub owner/name; None when the origin is not recorded (place the file by hand)
    commit: str | None = None  # 40-hex commit the file is fetched from
    upstream_path: str | None = None  # path inside that repository
    note: str = ""  # anything a user must know (attribution, why it cannot be downloaded)

    def url(self, base: str = GITHUB_RAW) -> str | None:
        if self.repo is None:
            return None
        return f"{base}/{self.repo}/{self.commit}/{self.upstream_path}"


@dataclass(frozen=True)
class ConvertedTrace:
    """The SmartMoE expert trace: raw logs `{raw_dir}/table_iter{I}_rank{R}.log` converted to one npz."""

    path: str  # npz, relative to the data directory
    counts_sha256: str  # sha256 of counts as little-endian uint16, C order, shape [I, R, L, M, E]
    licence: str
    repo: str
    commit: str
    raw_dir: str  # folder of the raw logs inside the repository
    iterations: tuple[int, ...]  # I values, in order
    num_ranks: int  # R
    num_layers: int  # L lines per file
    num_microbatches: int  # M lists per line
    num_experts: int  # E numbers per list
    long_csv_path: str | None = None  # derived table iteration,layer,expert,tokens (gzip), relative to the data dir
    long_csv_sha256: str | None = None  # sha256 of that table's decompressed bytes (gzip headers vary by writer)

    def raw_name(self, iteration: int, rank: int) -> str:
        return f"table_iter{iteration}_rank{rank}.log"

    def raw_url(self, iteration: int, rank: int, base: str = GITHUB_RAW) -> str:
        return f"{base}/{self.repo}/{self.commit}/{self.raw_dir}/{self.raw_name(iteration, rank)}"


_AZURE = dict(repo="Azure/AzurePublicDataset", commit="b469a113cedca53ddc3bdea71a143dc4b7d8700c", licence="CC-BY-4.0")
_ETALON = dict(repo="project-etalon/etalon", commit="d5f18de15a2227a2d469365afc4fa9e2df0c631d", licence="Apache-2.0")
_LAER = dict(repo="Fizzmy/LAER-MoE-AE", commit="72db5b79c00b4e6cf523a0d0c0a23cd44defc3df", licence="Apache-2.0")
_LAER_DIR = "LAER-MoE/scripts_ae"  # the authors' artifact: the paper's measured results, one CSV per figure

MANIFEST: tuple[DataFile, ...] = (
    DataFile(
        "azure_llm_inference_2023/AzureLLMInferenceTrace_code.csv",
        "54e9a6d2a4bd06ba1e060304b900abbc74cbea53de96506e60fe5bb4f2277fb6",
        upstream_path="data/AzureLLMInferenceTrace_code.csv",
        note="cite Patel et al., Splitwise, ISCA 2024",
        **_AZURE,
    ),
    DataFile(
        "azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv",
        "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8",
        upstream_path="data/AzureLLMInferenceTrace_conv.csv",
        note="cite Patel et al., Splitwise, ISCA 2024",
        **_AZURE,
    ),
    DataFile(
        "sharegpt_arxiv_length_stats/sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
        "6d6c296302a853e2669a674a96f269283e60c57e60363bd450588a1066919f9f",
        upstream_path="data/processed_traces/sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
        **_ETALON,
    ),
    DataFile(
        "sharegpt_arxiv_length_stats/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv",
        "9d3580538d915ca75e4aaaa54590b42dbb17abc6d74c8913310cf07c232adcdc",
        upstream_path="data/processed_traces/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv",
        **_ETALON,
    ),
    DataFile(
        "splitwise_sim_perf_model/perf_model.csv",
        "dbbe505d1d64fc4bd1ec03c50edf944643586de4f68a81e94cbd55dd5bdfbf41",
        licence="MIT",
        repo="Mutinifni/splitwise-sim",
        commit="8f99e7dc9b407f4ce2488d03dd44c0b8b946dab0",
        upstream_path="data/perf_model.csv",
    ),
) + tuple(
    DataFile(f"laer_moe_paper_results/{name}", digest, upstream_path=f"{_LAER_DIR}/{name}", **_LAER)
    for name, digest in (
        ("e2e_analysis_backup.csv", "1c2dc99e69b7960ef2c19511212e2edceafd28fc51e7465e963ad22092c32dbe"),
        ("breakdown_analysis_backup.csv", "d8bf6ad743173e5ec751df72822e3101dfe541bf92cedc67dc664b510cca78d7"),
        ("token_analysis_backup.csv", "b675f5089c7d4e156184ab26dc4e3accddf0291e148455807e57c0bbe6163cf1"),
        ("planner_results_backup.csv", "168e05a2db90f209abb7f5ea38598d8ee44acd5dc31e687a1597651bed9c1241"),
        ("ablation_analysis_backup.csv", "9b3098c81274d59ada44210659abf37fc8fa3cc53132c5c570b080c5749a72d1"),
        ("convergence_analysis_backup.csv", "ae4c4dfda7aa18ac78fcac22f189f8161a3487f1d2cef530582458c33ab578bb"),
    )
)

SMARTMOE = ConvertedTrace(
    path="smartmoe_expert_trace/smartmoe_counts.npz",
    # Computed from the npz in the shared data directory (itself round-trip checked against the raw logs).
    counts_sha256="19ccdb98555f7655e32dc1a87386c8e4bd6724987441b3e67113a2235881039b",
    licence="GPL-3.0",
    repo="thu-pacman/SmartMoE-AE",
    commit="e19b3a994db5f7614778fd02c48f602ba9d9ac6e",
    raw_dir="moe_trace",
    iterations=tuple(range(1, 5002, 10)),
    num_ranks=16,
    num_layers=24,
    num_microbatches=4,
    num_experts=32,
    long_csv_path="smartmoe_expert_trace/smartmoe_iter_layer_expert.csv.gz",
    long_csv_sha256="56ac380549565bb503ff22d27febb4f8677a45771e93e3f7bcdf559d2a56b620",
)


# ---------------------------------------------------------------------------------------------------------------------
# Hashes and verification
# ---------------------------------------------------------------------------------------------------------------------


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def counts_sha256(counts: np.ndarray) -> str:
    """sha256 of a counts array as little-endian uint16 in C order (values must fit uint16)."""
    c = np.asarray(counts)
    if c.size and (c.min() < 0 or c.max() > np.iinfo(np.uint16).max):
        raise ValueError("counts_sha256: values must fit in uint16")
    return hashlib.sha256(np.ascontiguousarray(c, dtype="<u2").tobytes()).hexdigest()


@dataclass(frozen=True)
class Check:
    """The outcome of checking one file of the data directory."""

    path: Path  # absolute path checked
    status: str  # "ok", "missing" or "mismatch"
    actual: str | None = None  # the digest found, for "mismatch"


def verify_file(data_dir: str | Path, entry: DataFile) -> Check:
    p = Path(data_dir) / entry.path
    if not p.is_file():
        return Check(p, "missing")
    digest = sha256_file(p)
    return Check(p, "ok" if digest == entry.sha256 else "mismatch", digest)


def verify_converted(data_dir: str | Path, spec: ConvertedTrace = SMARTMOE) -> Check:
    p = Path(data_dir) / spec.path
    if not p.is_file():
        return Check(p, "missing")
    try:
        with np.load(p, allow_pickle=False) as z:
            digest = counts_sha256(z["counts"])
    except Exception as exc:  # unreadable or without counts: a mismatch, with the reason as the "digest"
        return Check(p, "mismatch", f"unreadable ({type(exc).__name__}: {exc})")
    return Check(p, "ok" if digest == spec.counts_sha256 else "mismatch", digest)


# ---------------------------------------------------------------------------------------------------------------------
# SmartMoE raw logs -> npz
# ---------------------------------------------------------------------------------------------------------------------


def parse_raw_log(path: str | Path, num_layers: int, num_microbatches: int, num_experts: int) -> np.ndarray:
    """[L, M, E] uint16 from one `table_iter{I}_rank{R}.log`: L lines `{layer}:{json}`, json = M lists of E whole
    numbers written as floats. Any deviation is a TraceError naming the line."""
    path = Path(path)
    lines = path.read_text().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != num_layers:
        raise TraceError(path, [(len(lines) or 1, f"expected {num_layers} lines (one per layer), got {len(lines)}")])
    out = np.empty((num_layers, num_microbatches, num_experts), dtype=np.uint16)
    for ln, line in enumerate(lines, start=1):
        head, sep, body = line.partition(":")
        if not sep or head.strip() != str(ln - 1):
            raise TraceError(path, [(ln, f"expected the line to start with '{ln - 1}:', got {line[:20]!r}")])
        try:
            a = np.array(json.loads(body), dtype=np.float64)
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            raise TraceError(
                path, [(ln, f"not a JSON list of {num_microbatches} x {num_experts} numbers ({exc})")]
            ) from exc
        if a.shape != (num_microbatches, num_experts):
            raise TraceError(path, [(ln, f"expected {num_microbatches} x {num_experts} numbers, got shape {a.shape}")])
        if not np.all((a == np.round(a)) & (a >= 0) & (a <= np.iinfo(np.uint16).max)):
            raise TraceError(path, [(ln, "counts must be whole numbers in [0, 65535]")])
        out[ln - 1] = a
    return out


def convert_raw_logs(
    raw_dir: str | Path, spec: ConvertedTrace = SMARTMOE, progress: Callable[[Iterable], Iterable] = iter
) -> np.ndarray:
    """counts [I, R, L, M, E] uint16 from the raw log folder (every file must be there)."""
    raw_dir = Path(raw_dir)
    shape = (len(spec.iterations), spec.num_ranks, spec.num_layers, spec.num_microbatches, spec.num_experts)
    counts = np.empty(shape, dtype=np.uint16)
    jobs = [(i, it, r) for i, it in enumerate(spec.iterations) for r in range(spec.num_ranks)]
    missing = [spec.raw_name(it, r) for _, it, r in jobs if not (raw_dir / spec.raw_name(it, r)).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} raw logs missing under {raw_dir}, e.g. {missing[:3]}")
    for i, it, r in progress(jobs):
        counts[i, r] = parse_raw_log(raw_dir / spec.raw_name(it, r), *shape[2:])
    return counts


def write_counts_npz(counts: np.ndarray, spec: ConvertedTrace, path: str | Path) -> Path:
    """Our layout: counts uint16 [I, R, L, M, E], iterations int32 [I], ranks int32 [R]. Written to a temporary
    name first so a half-written file never looks complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.npz")
    np.savez_compressed(
        tmp,
        counts=np.asarray(counts, dtype=np.uint16),
        iterations=np.array(spec.iterations, dtype=np.int32),
        ranks=np.arange(spec.num_ranks, dtype=np.int32),
    )
    os.replace(tmp, path)
    return path


def long_csv_bytes(counts: np.ndarray, iterations) -> bytes:
    """The derived long table: `iteration,layer,expert,tokens`, tokens summed over ranks and micro-batches, rows in
    (iteration, layer, expert) order, CRLF line ends (as the copy in the shared data directory was written)."""
    per = np.asarray(counts, dtype=np.int64).sum(axis=(1, 3))  # [I, L, E]
    i, n_l, e = per.shape
    it = np.repeat(np.asarray(iterations, dtype=np.int64), n_l * e)
    layer = np.tile(np.repeat(np.arange(n_l), e), i)
    expert = np.tile(np.arange(e), i * n_l)
    rows = ["iteration,layer,expert,tokens"]
    rows += [
        f"{a},{b},{c},{d}" for a, b, c, d in zip(it.tolist(), layer.tolist(), expert.tolist(), per.ravel().tolist())
    ]
    return ("\r\n".join(rows) + "\r\n").encode()


def write_long_csv_gz(data: bytes, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with gzip.GzipFile(tmp, "wb", mtime=0) as f:  # mtime=0: the same bytes every time
        f.write(data)
    os.replace(tmp, path)
    return path


def verify_long_csv(data_dir: str | Path, spec: ConvertedTrace = SMARTMOE) -> Check:
    p = Path(data_dir) / spec.long_csv_path
    if not p.is_file():
        return Check(p, "missing")
    try:
        digest = hashlib.sha256(gzip.decompress(p.read_bytes())).hexdigest()
    except (OSError, EOFError) as exc:
        return Check(p, "mismatch", f"unreadable ({type(exc).__name__}: {exc})")
    return Check(p, "ok" if digest == spec.long_csv_sha256 else "mismatch", digest)


# ---------------------------------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------------------------------


class ChecksumMismatch(RuntimeError):
    """A downloaded or converted file differs from the recorded digest; nothing was written in its place."""


class DownloadInterrupted(OSError):
    """The connection ended before the whole file arrived; the `.part` file is kept so the next run resumes it."""


def _one_line(exc: BaseException) -> str:
    """An exception as one short line (urllib nests the reason; some carry newlines)."""
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason} for {exc.url}"
    elif isinstance(exc, urllib.error.URLError):
        text = str(exc.reason)
    else:
        text = str(exc)
    return " ".join((text or type(exc).__name__).split())


def _unreachable(exc: BaseException) -> str | None:
    """Why the server could not be reached at all, or None when it answered (an HTTP error, a cut transfer): after
    such a failure the other files from the same server are not tried, so an offline machine does not wait once per
    file."""
    if isinstance(exc, (urllib.error.HTTPError, DownloadInterrupted)):
        return None
    if isinstance(exc, (urllib.error.URLError, TimeoutError, ConnectionRefusedError, socket.gaierror)):
        return _one_line(exc)
    return None


def reachable(url: str, timeout_s: float = 5.0) -> str | None:
    """None when the server behind an http(s) `url` answers (any status), else why not, in one line. Other schemes
    (file://) are not probed."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        return None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None
    except (OSError, http.client.HTTPException) as exc:
        return _one_line(exc)


def _range_start(content_range: str | None) -> int | None:
    """The first byte of a `Content-Range: bytes A-B/N` header."""
    if not content_range or not content_range.startswith("bytes "):
        return None
    head = content_range[6:].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _fetch_part(url: str, part: Path, progress, on_size, timeout_s: float) -> str:
    """Append the rest of `url` to `part` (a Range request from its current size) or rewrite it whole when the server
    sends the whole file. Returns the sha256 of the part's full content."""
    have = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part is as long as the file or longer: it cannot be resumed
            part.unlink()
            return _fetch_part(url, part, progress, on_size, timeout_s)
        raise
    with resp:
        resumed = have > 0 and getattr(resp, "status", None) == 206 and _range_start(resp.headers.get("Content-Range")) == have
        if not resumed:
            have = 0  # the server ignored Range (or this is a fresh start): its body is the whole file
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        if on_size:
            on_size(None if expected is None else have + expected, have)
        h = hashlib.sha256()
        if resumed:
            with open(part, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
        got = 0
        with open(part, "ab" if resumed else "wb") as f:
            try:
                while block := resp.read(1 << 16):
                    f.write(block)
                    h.update(block)
                    got += len(block)
                    if progress:
                        progress(len(block))
            except (OSError, http.client.HTTPException) as exc:
                raise DownloadInterrupted(
                    f"{url}: transfer broke off after {have + got} bytes ({_one_line(exc)}); kept {part}, rerun to "
                    f"resume"
                ) from exc
    if expected is not None and got < expected:  # http.client returns a short body without an error
        raise DownloadInterrupted(
            f"{url}: connection closed after {have + got} of {have + expected} bytes; kept {part}, rerun to resume"
        )
    return h.hexdigest()


def download(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    progress: Callable[[int], None] | None = None,
    timeout_s: float = 60.0,
    on_size: Callable[[int | None, int], None] | None = None,
) -> Path:
    """Fetch `url` to `dest` through `dest.part`, which survives an interrupted transfer: the next call resumes it
    with an HTTP Range request (a server that ignores Range sends the whole file, and the part starts over).

    With `sha256`, a mismatch deletes the part and raises ChecksumMismatch (after one fresh attempt when the part
    was resumed, since the kept prefix may be stale); `dest` is only ever replaced by verified bytes.
    `progress(nbytes)` is called per block, `on_size(total_bytes or None, bytes_already_here)` once per request."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    resuming = part.is_file() and part.stat().st_size > 0
    try:
        digest = _fetch_part(url, part, progress, on_size, timeout_s)
    except BaseException:
        if part.is_file() and part.stat().st_size == 0:
            part.unlink()  # nothing to resume
        raise
    if sha256 is not None and digest != sha256:
        part.unlink()
        if resuming:
            return download(url, dest, sha256, progress, timeout_s, on_size)
        raise ChecksumMismatch(
            f"{url}: sha256 {digest} differs from the recorded {sha256}; not written to {dest}. The upstream "
            f"file changed or the download was altered: check the URL and the manifest in common/datasets.py"
        )
    os.replace(part, dest)
    return dest


def fetch_raw_logs(
    spec: ConvertedTrace,
    raw_dir: str | Path,
    base: str = GITHUB_RAW,
    workers: int = 16,
    progress=None,
    retries: int = 2,
    timeout_s: float = 60.0,
) -> int:
    """Download every raw log not already in `raw_dir` (so an interrupted run resumes). Returns how many were fetched.
    The logs carry no individual digests: the converted counts are verified as a whole."""
    raw_dir = Path(raw_dir)
    todo = [
        (it, r)
        for it in spec.iterations
        for r in range(spec.num_ranks)
        if not (raw_dir / spec.raw_name(it, r)).is_file()
    ]

    def one(job):
        it, r = job
        for attempt in range(retries + 1):  # 8,016 small requests: retry transient failures rather than start over
            try:
                download(spec.raw_url(it, r, base), raw_dir / spec.raw_name(it, r), timeout_s=timeout_s)
                break
            except OSError as exc:
                if attempt == retries or _unreachable(exc) is not None:
                    raise
        if progress:
            progress(1)

    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        for _ in pool.map(one, todo):  # re-raises the first failure
            pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after a failure, do not fetch the rest
    return len(todo)


# ---------------------------------------------------------------------------------------------------------------------
# The whole data directory (what `make data` runs)
# ---------------------------------------------------------------------------------------------------------------------


def sync(
    data_dir: str | Path,
    manifest: Iterable[DataFile] = MANIFEST,
    smartmoe: ConvertedTrace | None = SMARTMOE,
    base: str = GITHUB_RAW,
    workers: int = 16,
    keep_raw: bool = False,
    log: Callable[[str], None] = _LOG.info,
    progress: bool = True,
    timeout_s: float = 60.0,
) -> list[str]:
    """Bring `data_dir` up to the manifest. Returns the problems, one line each (empty when every file is present
    and verified). `base` serves `{repo}/{commit}/{path}` (raw.githubusercontent.com or a mirror of it).

    1. A file already present and verified is skipped.
    2. A file present with a different digest is left untouched and reported: we never overwrite a user's file.
    3. A missing file with a known origin is downloaded (resuming a `.part` left by an interrupted run) and verified;
       one without is reported with its note. The server is probed once first, and after a failure to reach it the
       remaining files are reported as not fetched instead of each waiting for its own timeout.
    4. The SmartMoE npz: if missing, fetch its raw logs (resuming), convert, verify the counts digest, then write.
    5. Its derived long table (csv.gz): if missing, build it from the npz and verify the decompressed digest.
    """
    from tqdm import tqdm

    data_dir = Path(data_dir)
    problems: list[str] = []
    todo: list[tuple[DataFile, Check]] = []
    for entry in manifest:
        check = verify_file(data_dir, entry)
        if check.status == "ok":  # Step 1
            log(f"ok        {entry.path}")
        elif check.status == "mismatch":  # Step 2
            problems.append(
                f"{check.path}: sha256 {check.actual} differs from the published {entry.sha256}. Left as is; "
                f"move it aside (or delete it) and rerun to fetch the original"
            )
            log(f"MISMATCH  {entry.path}")
        elif entry.url(base) is None:  # Step 3, no origin
            problems.append(f"{check.path}: missing; {entry.note}")
            log(f"MISSING   {entry.path} (no download source)")
        else:
            todo.append((entry, check))
    smart_check = verify_converted(data_dir, smartmoe) if smartmoe is not None else None
    smartmoe_missing = smart_check is not None and smart_check.status == "missing"

    # Step 3: one probe, so that an unreachable server costs one timeout, not one per file.
    first = todo[0][0].url(base) if todo else smartmoe.raw_url(smartmoe.iterations[0], 0, base) if smartmoe_missing else None
    down = reachable(first, min(timeout_s, 10.0)) if first else None
    overall = tqdm(total=len(todo) + smartmoe_missing, unit="file", desc="data", disable=not progress or not first)
    with overall:
        for entry, check in todo:
            url = entry.url(base)
            if down is not None:
                problems.append(f"{check.path}: not fetched, {base} did not answer ({down})")
                log(f"SKIPPED   {entry.path} (server unreachable)")
                overall.update()
                continue
            log(f"fetching  {entry.path} <- {url}")
            with tqdm(unit="B", unit_scale=True, desc=Path(entry.path).name, leave=False, disable=not progress) as bar:

                def sized(total, have, bar=bar):
                    bar.reset(total)
                    bar.update(have)

                try:
                    download(url, check.path, entry.sha256, progress=bar.update, timeout_s=timeout_s, on_size=sized)
                    log(f"ok        {entry.path} (downloaded, sha256 verified)")
                except (ChecksumMismatch, OSError, http.client.HTTPException) as exc:
                    problems.append(f"{check.path}: download failed: {_one_line(exc)}")
                    log(f"FAILED    {entry.path}")
                    down = _unreachable(exc)
            overall.update()
        if smartmoe is not None:
            if smartmoe_missing and down is not None:
                problems.append(f"{data_dir / smartmoe.path}: not fetched, {base} did not answer ({down})")
                log(f"SKIPPED   {smartmoe.path} (server unreachable)")
            else:
                problems += _sync_smartmoe(data_dir, smartmoe, smart_check, base, workers, keep_raw, log, progress, timeout_s)
            overall.update(smartmoe_missing)
    return problems


def _sync_smartmoe(
    data_dir: Path, spec: ConvertedTrace, check: Check, base: str, workers: int, keep_raw: bool, log, progress: bool,
    timeout_s: float,
) -> list[str]:
    """The npz (step 4 of sync; `check` is its verification), then the long table derived from it."""
    problems = _sync_smartmoe_npz(data_dir, spec, check, base, workers, keep_raw, log, progress, timeout_s)
    if problems or spec.long_csv_path is None:
        return problems
    check = verify_long_csv(data_dir, spec)
    if check.status == "ok":
        log(f"ok        {spec.long_csv_path}")
        return []
    if check.status == "mismatch":
        log(f"MISMATCH  {spec.long_csv_path}")
        return [
            f"{check.path}: content sha256 {check.actual} differs from {spec.long_csv_sha256}. Left as is; delete it to rebuild"
        ]
    with np.load(data_dir / spec.path, allow_pickle=False) as z:
        data = long_csv_bytes(z["counts"], z["iterations"])
    if hashlib.sha256(data).hexdigest() != spec.long_csv_sha256:
        return [f"{check.path}: the table built from {spec.path} does not match the recorded digest; not written"]
    write_long_csv_gz(data, check.path)
    log(f"ok        {spec.long_csv_path} (derived from the npz, sha256 verified)")
    return []


def _sync_smartmoe_npz(
    data_dir: Path, spec: ConvertedTrace, check: Check, base: str, workers: int, keep_raw: bool, log, progress: bool,
    timeout_s: float,
) -> list[str]:
    from tqdm import tqdm

    if check.status == "ok":
        log(f"ok        {spec.path}")
        return []
    if check.status == "mismatch":
        log(f"MISMATCH  {spec.path}")
        return [
            f"{check.path}: counts sha256 {check.actual} differs from the recorded {spec.counts_sha256}. Left as is; "
            f"move it aside (or delete it) and rerun to rebuild it from the raw logs"
        ]
    raw_dir = check.path.parent / "raw" / spec.raw_dir
    total = len(spec.iterations) * spec.num_ranks
    log(f"fetching  {total} raw logs of {spec.repo}@{spec.commit[:10]}/{spec.raw_dir} into {raw_dir}")
    try:
        with tqdm(total=total, unit="file", desc="raw logs", leave=False, disable=not progress) as bar:
            bar.update(sum(1 for p in raw_dir.glob("table_iter*_rank*.log")) if raw_dir.is_dir() else 0)
            fetch_raw_logs(spec, raw_dir, base, workers, progress=bar.update, timeout_s=timeout_s)
        counts = convert_raw_logs(
            raw_dir, spec, progress=lambda jobs: tqdm(jobs, unit="file", desc="converting", leave=False, disable=not progress)
        )
    except (OSError, TraceError, http.client.HTTPException) as exc:
        log(f"FAILED    {spec.path}")
        return [f"{check.path}: could not build from the raw logs: {_one_line(exc)} (rerun to resume)"]
    digest = counts_sha256(counts)
    if digest != spec.counts_sha256:
        log(f"MISMATCH  {spec.path} (converted)")
        return [
            f"{check.path}: the converted counts have sha256 {digest}, not the recorded {spec.counts_sha256}; "
            f"not written. The raw logs under {raw_dir} differ from the published ones"
        ]
    write_counts_npz(counts, spec, check.path)
    log(f"ok        {spec.path} (converted from {total} raw logs, counts sha256 verified)")
    if not keep_raw:
        for p in raw_dir.glob("table_iter*_rank*.log"):
            p.unlink()
    return []
