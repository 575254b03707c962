"""Manifest of the public data the project uses, and the download / verify / convert steps behind `make data`.

Every file is fetched from a pinned commit of its upstream repository and checked against a sha256 recorded here.
The SmartMoE expert trace is published as 8,016 small text logs; we fetch those and convert them into our npz layout,
then check the sha256 of the converted `counts` array (the npz container's own bytes depend on the zip writer).

Notation: I sampled iterations, R ranks, L layers, M micro-batches, E experts.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.traces import TraceError

GITHUB_RAW = "https://raw.githubusercontent.com"


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
_LAER_NOTE = (
    "the LAER-MoE paper's artifact CSV (scripts_ae/); the data README records no repository or commit for it, "
    "so it cannot be fetched automatically: copy it into the data directory by hand and this script verifies it"
)

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
    DataFile(f"laer_moe_paper_results/{name}", digest, licence="Apache-2.0", note=_LAER_NOTE)
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


def download(url: str, dest: str | Path, sha256: str | None = None, progress=None, timeout_s: float = 60.0) -> Path:
    """Fetch `url` to `dest` through a `.part` file; with `sha256`, refuse (delete the part, raise) on a mismatch.
    `progress(nbytes)` is called per block."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp, open(part, "wb") as f:
            while block := resp.read(1 << 16):
                f.write(block)
                h.update(block)
                if progress:
                    progress(len(block))
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if sha256 is not None and h.hexdigest() != sha256:
        part.unlink()
        raise ChecksumMismatch(
            f"{url}: sha256 {h.hexdigest()} differs from the recorded {sha256}; not written to {dest}. The upstream "
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
                download(spec.raw_url(it, r, base), raw_dir / spec.raw_name(it, r))
                break
            except OSError:
                if attempt == retries:
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
    log: Callable[[str], None] = print,
) -> list[str]:
    """Bring `data_dir` up to the manifest. Returns the problems (empty when every file is present and verified).

    1. A file already present and verified is skipped.
    2. A file present with a different digest is left untouched and reported: we never overwrite a user's file.
    3. A missing file with a known origin is downloaded and verified; one without is reported with its note.
    4. The SmartMoE npz: if missing, fetch its raw logs (resuming), convert, verify the counts digest, then write.
    5. Its derived long table (csv.gz): if missing, build it from the npz and verify the decompressed digest.
    """
    from tqdm import tqdm

    data_dir = Path(data_dir)
    problems: list[str] = []
    for entry in manifest:
        check = verify_file(data_dir, entry)
        if check.status == "ok":  # Step 1
            log(f"ok        {entry.path}")
            continue
        if check.status == "mismatch":  # Step 2
            problems.append(
                f"{check.path}: sha256 {check.actual} differs from the published {entry.sha256}. Left as is; "
                f"move it aside (or delete it) and rerun to fetch the original"
            )
            log(f"MISMATCH  {entry.path}")
            continue
        url = entry.url(base)
        if url is None:  # Step 3, no origin
            problems.append(f"{check.path}: missing; {entry.note}")
            log(f"MISSING   {entry.path} (no download source)")
            continue
        log(f"fetching  {entry.path} <- {url}")
        try:
            with tqdm(unit="B", unit_scale=True, desc=Path(entry.path).name, leave=False) as bar:
                download(url, check.path, entry.sha256, progress=bar.update)
            log(f"ok        {entry.path} (downloaded, sha256 verified)")
        except (ChecksumMismatch, OSError) as exc:
            problems.append(f"{check.path}: download failed: {exc}")
            log(f"FAILED    {entry.path}")
    if smartmoe is not None:
        problems += _sync_smartmoe(data_dir, smartmoe, base, workers, keep_raw, log)
    return problems


def _sync_smartmoe(data_dir: Path, spec: ConvertedTrace, base: str, workers: int, keep_raw: bool, log) -> list[str]:
    """The npz (step 4 of sync), then the long table derived from it."""
    problems = _sync_smartmoe_npz(data_dir, spec, base, workers, keep_raw, log)
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


def _sync_smartmoe_npz(data_dir: Path, spec: ConvertedTrace, base: str, workers: int, keep_raw: bool, log) -> list[str]:
    from tqdm import tqdm

    check = verify_converted(data_dir, spec)
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
        with tqdm(total=total, unit="file", desc="raw logs") as bar:
            bar.update(sum(1 for p in raw_dir.glob("table_iter*_rank*.log")) if raw_dir.is_dir() else 0)
            fetch_raw_logs(spec, raw_dir, base, workers, progress=bar.update)
        counts = convert_raw_logs(raw_dir, spec, progress=lambda jobs: tqdm(jobs, unit="file", desc="converting"))
    except (OSError, TraceError) as exc:
        log(f"FAILED    {spec.path}")
        return [f"{check.path}: could not build from the raw logs: {exc} (rerun to resume)"]
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
