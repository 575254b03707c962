"""Typed, validated traces: the SmartMoE expert-load npz and request traces (Azure 2023 CSV, Mooncake JSONL, generic CSV).

Notation: I sampled iterations, R source ranks, L MoE layers, M micro-batches, E experts; Q requests.

Every loader reads the whole file, checks every row and raises one `TraceError` listing the bad rows as
`path:line: reason` (first bad row first). Nothing is skipped or coerced silently. A missing file is a
`FileNotFoundError` naming it.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

# How many bad rows a TraceError spells out before summarising the rest.
MAX_REPORTED = 10

TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


class TraceFormat(str, Enum):
    """Request-trace file formats `load_request_trace` reads."""

    azure = "azure"  # Azure LLM inference 2023 CSV: TIMESTAMP,ContextTokens,GeneratedTokens
    mooncake = "mooncake"  # Mooncake JSONL: timestamp (ms), input_length, output_length
    csv = "csv"  # any CSV, with load_csv_trace's column mapping


REQUEST_FORMATS = tuple(f.value for f in TraceFormat)


class TraceError(ValueError):
    """A trace file that does not hold what it should. `problems` is [(line or None, reason)], in file order."""

    def __init__(self, path: str | Path, problems: Sequence[tuple[int | None, str]]):
        self.path = str(path)
        self.problems = list(problems)
        self.line = self.problems[0][0] if self.problems else None
        shown = [f"{self.path}:{ln}: {why}" if ln is not None else f"{self.path}: {why}" for ln, why in problems]
        if len(shown) > MAX_REPORTED:
            shown = shown[:MAX_REPORTED] + [f"... and {len(shown) - MAX_REPORTED} more bad rows in {self.path}"]
        super().__init__("\n".join(shown))


def _frozen(a: np.ndarray) -> np.ndarray:
    """Read-only; `a` must be an array this module owns (a fresh copy), so nobody else can still write to it."""
    a.setflags(write=False)
    return a


def _as_int64(a, name: str, where: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{where}: {name} must be integer counts, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a) & (a == np.round(a))):
        raise ValueError(f"{where}: {name} must hold whole numbers")
    return a.astype(np.int64, copy=True)  # always a private copy: callers' arrays stay theirs


# ---------------------------------------------------------------------------------------------------------------------
# Expert load
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ExpertLoadTrace:
    """Tokens routed to each expert, per sampled iteration, source rank, layer and micro-batch. Arrays are read-only."""

    counts: np.ndarray  # [I, R, L, M, E] int64 >= 0: tokens rank r sent to expert e in layer l, micro-batch m
    iterations: np.ndarray  # [I] int64, strictly increasing training-iteration numbers of the samples
    source: str = ""  # where it came from (a path, or "synthetic")

    def __post_init__(self):
        where = f"ExpertLoadTrace({self.source or 'unnamed'})"
        unsigned = np.issubdtype(np.asarray(self.counts).dtype, np.unsignedinteger)
        c = _as_int64(self.counts, "counts", where)
        if c.ndim != 5 or min(c.shape) < 1:
            raise ValueError(f"{where}: counts must be a non-empty [I, R, L, M, E] array, got shape {c.shape}")
        if not unsigned and (c < 0).any():  # the scan costs ~0.1 s on the real trace; unsigned input cannot fail it
            idx = tuple(int(i) for i in np.argwhere(c < 0)[0])
            raise ValueError(f"{where}: negative count {c[idx]} at [I, R, L, M, E] index {idx}")
        it = _as_int64(self.iterations, "iterations", where)
        if it.shape != (c.shape[0],):
            raise ValueError(f"{where}: iterations must have shape [{c.shape[0]}] (one per sample), got {it.shape}")
        if it.size > 1 and (np.diff(it) <= 0).any():
            k = int(np.flatnonzero(np.diff(it) <= 0)[0])
            raise ValueError(f"{where}: iterations must increase strictly; {it[k]} is followed by {it[k + 1]}")
        object.__setattr__(self, "counts", _frozen(c))
        object.__setattr__(self, "iterations", _frozen(it))

    @property
    def num_iterations(self) -> int:
        return self.counts.shape[0]

    @property
    def num_ranks(self) -> int:
        return self.counts.shape[1]

    @property
    def num_layers(self) -> int:
        return self.counts.shape[2]

    @property
    def num_microbatches(self) -> int:
        return self.counts.shape[3]

    @property
    def num_experts(self) -> int:
        return self.counts.shape[4]

    def merge_ranks(self, n: int) -> ExpertLoadTrace:
        """The same load seen from `n` source ranks: rank j of the result sums source ranks j*R/n .. (j+1)*R/n - 1.

        Use it to replay a 16-rank trace on 8 devices (each device then sends what two original ranks sent)."""
        r = self.num_ranks
        if not isinstance(n, (int, np.integer)) or n < 1 or r % n:
            raise ValueError(f"merge_ranks: the trace has {r} ranks; n must be a positive divisor of {r}, got {n!r}")
        i, _, layers, m, e = self.counts.shape
        merged = self.counts.reshape(i, int(n), r // int(n), layers, m, e).sum(axis=2)
        return ExpertLoadTrace(merged, self.iterations, f"{self.source} (ranks merged {r}->{n})")

    # A layer's micro-batches in training order form one sequence, iteration-major: position t is micro-batch
    # t % M of sampled iteration t // M. The planners' lagged input for t sums the `window` positions before it.
    def microbatch(self, layer: int, t: int) -> np.ndarray:
        """[R, E] counts of position t of the layer's iteration-major micro-batch sequence (read-only view)."""
        i, m = self._position(t)
        return self.counts[i, :, layer, m]

    def window_sum(self, layer: int, t: int, window: int) -> np.ndarray:
        """[R, E] int64 sum of positions t - window .. t - 1 of the layer's iteration-major micro-batch sequence (the
        load a planner sees before micro-batch t; integer counts, so a sum rather than a mean stays exact)."""
        if not isinstance(window, (int, np.integer)) or not 0 <= window <= t:
            raise ValueError(f"window_sum: window must be an integer in [0, t={t}], got {window!r}")
        self._position(t)
        i, m = np.divmod(np.arange(t - window, t), self.num_microbatches)
        return self.counts[i, :, layer, m].sum(0)  # [window, R, E] -> [R, E]

    def _position(self, t: int) -> tuple[int, int]:
        if not 0 <= t < self.num_iterations * self.num_microbatches:
            raise ValueError(f"micro-batch position {t} outside [0, {self.num_iterations * self.num_microbatches}) "
                             f"({self.num_iterations} iterations x {self.num_microbatches} micro-batches)")
        return divmod(int(t), self.num_microbatches)


def load_expert_trace(path: str | Path) -> ExpertLoadTrace:
    """The SmartMoE expert-load npz: `counts` [I, R, L, M, E] (uint16 upstream) and `iterations` [I]."""
    path = _existing(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("counts", "iterations") if k not in z.files]
            if missing:
                raise TraceError(path, [(None, f"missing array(s) {missing}; the file has {sorted(z.files)}")])
            counts, iterations = z["counts"], z["iterations"]
    except TraceError:
        raise
    except Exception as exc:  # a truncated or non-npz file: say which file
        raise TraceError(path, [(None, f"not a readable npz file ({type(exc).__name__}: {exc})")]) from exc
    try:
        return ExpertLoadTrace(counts, iterations, str(path))
    except ValueError as exc:
        raise TraceError(path, [(None, str(exc))]) from exc


# ---------------------------------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RequestTrace:
    """Requests as (arrival time, prompt length, output length). Arrays are read-only.

    Loaders put the first request at time 0. `slice` re-bases to the window start (see there), so a trace's first
    arrival may be later than 0; every arrival is >= 0 and they never decrease."""

    arrival_s: np.ndarray  # [Q] float64 seconds from the trace origin, non-decreasing, >= 0
    input_tokens: np.ndarray  # [Q] int64 >= 0, prompt (context) tokens
    output_tokens: np.ndarray  # [Q] int64 >= 0, generated tokens
    source: str = ""  # where it came from (a path, or "synthetic")

    def __post_init__(self):
        where = f"RequestTrace({self.source or 'unnamed'})"
        t = np.array(self.arrival_s, dtype=np.float64)  # a private copy
        inp = _as_int64(self.input_tokens, "input_tokens", where)
        out = _as_int64(self.output_tokens, "output_tokens", where)
        if t.ndim != 1 or inp.shape != t.shape or out.shape != t.shape:
            raise ValueError(
                f"{where}: arrival_s, input_tokens, output_tokens must be 1-D of one length, "
                f"got {t.shape}, {inp.shape}, {out.shape}"
            )
        if not np.all(np.isfinite(t)) or (t < 0).any():
            raise ValueError(f"{where}: arrival_s must be finite and >= 0")
        if t.size > 1 and (np.diff(t) < 0).any():
            k = int(np.flatnonzero(np.diff(t) < 0)[0])
            raise ValueError(f"{where}: arrival_s decreases at request {k + 1} ({t[k]} -> {t[k + 1]})")
        for name, a in (("input_tokens", inp), ("output_tokens", out)):
            if (a < 0).any():
                k = int(np.flatnonzero(a < 0)[0])
                raise ValueError(f"{where}: negative {name} {a[k]} at request {k}")
        object.__setattr__(self, "arrival_s", _frozen(t))
        object.__setattr__(self, "input_tokens", _frozen(inp))
        object.__setattr__(self, "output_tokens", _frozen(out))

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    @property
    def duration_s(self) -> float:
        """Seconds from the trace origin (0) to the last arrival; 0.0 for an empty trace."""
        return float(self.arrival_s[-1]) if len(self) else 0.0

    def slice(self, t0: float, t1: float) -> RequestTrace:
        """Requests with t0 <= arrival < t1, re-based so that t0 becomes 0.

        Re-basing to the window start (not to the first request in it) keeps the gap before the first arrival, so
        rates binned over the slice cover exactly the window [0, t1 - t0)."""
        if not (math.isfinite(t0) and math.isfinite(t1)) or t0 < 0 or t1 < t0:
            raise ValueError(f"RequestTrace.slice: need 0 <= t0 <= t1 (finite), got t0={t0}, t1={t1}")
        lo, hi = np.searchsorted(self.arrival_s, [t0, t1], side="left")
        return RequestTrace(
            self.arrival_s[lo:hi] - t0,
            self.input_tokens[lo:hi],
            self.output_tokens[lo:hi],
            f"{self.source} [{t0:g}s, {t1:g}s)",
        )

    def scale_rate(self, factor: float) -> RequestTrace:
        """The same requests `factor` times faster: every inter-arrival time (and the start offset) divided by factor."""
        try:
            f = float(factor)
        except (TypeError, ValueError):
            f = math.nan
        if not (math.isfinite(f) and f > 0):
            raise ValueError(f"RequestTrace.scale_rate: factor must be a finite number > 0, got {factor!r}")
        return RequestTrace(
            self.arrival_s / f, self.input_tokens, self.output_tokens, f"{self.source} (rate x{factor:g})"
        )


def _existing(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"trace file {p} not found")
    return p


def _lines(path: Path) -> list[str]:
    """The file's lines without line terminators; a final newline does not make an extra line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TraceError(path, [(None, f"not UTF-8 text ({exc})")]) from exc
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d{1,9})?")


def _parse_datetimes(path: Path, stamps: list[str], line_nos: list[int]) -> np.ndarray:
    """[Q] int64 nanoseconds. Vectorised; only when numpy rejects the batch do we look row by row for the culprits."""
    try:
        return np.array(stamps, dtype="datetime64[ns]").astype(np.int64)
    except ValueError:
        bad = []
        for s, ln in zip(stamps, line_nos):
            try:
                np.datetime64(s, "ns")
            except ValueError:
                bad.append((ln, f"invalid timestamp {s!r}"))
        raise TraceError(path, bad or [(None, "invalid timestamps")]) from None


def _parse_int(field: str) -> int | None:
    try:
        return int(field)
    except ValueError:
        return None


def _finish(path: Path, t: np.ndarray, line_nos: np.ndarray, inp, out, scale: float) -> RequestTrace:
    """Check ordering, then re-base times so the first request arrives at 0."""
    dec = np.flatnonzero(np.diff(t) < 0)
    if dec.size:
        raise TraceError(
            path,
            [(int(line_nos[k + 1]), f"timestamp is earlier than the previous row's (line {line_nos[k]})") for k in dec],
        )
    arrival = (t - t[0]).astype(np.float64) * scale
    return RequestTrace(arrival, np.asarray(inp, dtype=np.int64), np.asarray(out, dtype=np.int64), str(path))


def load_csv_trace(
    path: str | Path, time_col: str, input_col: str, output_col: str, time_unit: str = "s"
) -> RequestTrace:
    """A CSV with a header row. `time_unit`: "s", "ms", "us", "ns" for numeric timestamps, or "datetime" for
    ISO-8601 wall-clock stamps (`2023-11-16 18:17:03.9799600`, up to 9 fractional digits). Extra columns are ignored."""
    if time_unit != "datetime" and time_unit not in TIME_UNITS:
        raise ValueError(
            f"load_csv_trace: time_unit must be one of {sorted(TIME_UNITS) + ['datetime']}, got {time_unit!r}"
        )
    path = _existing(path)
    lines = _lines(path)
    if not lines:
        raise TraceError(path, [(1, "empty file (no header, no rows)")])
    header = [h.strip() for h in next(csv.reader([lines[0]]))]
    missing = [c for c in (time_col, input_col, output_col) if c not in header]
    if missing:
        raise TraceError(path, [(1, f"missing column(s) {missing}; header has {header}")])
    if len(lines) == 1:
        raise TraceError(path, [(2, "no data rows after the header")])
    it, ii, io = header.index(time_col), header.index(input_col), header.index(output_col)
    ncol = len(header)

    problems: list[tuple[int, str]] = []
    stamps: list = []
    inp: list[int] = []
    out: list[int] = []
    line_nos: list[int] = []
    for ln, line in enumerate(lines[1:], start=2):
        row = line.split(",") if '"' not in line else next(csv.reader([line]), [])
        if not line.strip():
            problems.append((ln, "empty row"))
            continue
        if len(row) != ncol:
            problems.append((ln, f"expected {ncol} columns, got {len(row)}"))
            continue
        ts = row[it].strip()
        a, b = _parse_int(row[ii]), _parse_int(row[io])
        row_ok = True
        if not ts:
            problems.append((ln, f"missing timestamp ({time_col})"))
            row_ok = False
        elif time_unit == "datetime":
            if not _DATETIME.fullmatch(ts):
                problems.append((ln, f"{time_col} {ts!r} is not a timestamp like 2023-11-16 18:17:03.9799600"))
                row_ok = False
        else:
            try:
                ts = float(ts)
                if not math.isfinite(ts):
                    raise ValueError
            except ValueError:
                problems.append((ln, f"{time_col} {row[it].strip()!r} is not a finite number"))
                row_ok = False
        for col, val, raw in ((input_col, a, row[ii]), (output_col, b, row[io])):
            if val is None:
                problems.append((ln, f"{col} {raw.strip()!r} is not an integer"))
                row_ok = False
            elif val < 0:
                problems.append((ln, f"negative {col} {val}"))
                row_ok = False
        if row_ok:
            stamps.append(ts)
            inp.append(a)
            out.append(b)
            line_nos.append(ln)
    if problems:
        raise TraceError(path, problems)
    if time_unit == "datetime":
        t, scale = _parse_datetimes(path, stamps, line_nos), 1e-9
    else:
        t, scale = np.array(stamps, dtype=np.float64), TIME_UNITS[time_unit]
    return _finish(path, t, np.array(line_nos), inp, out, scale)


def load_azure_trace(path: str | Path) -> RequestTrace:
    """Azure LLM inference trace 2023: `TIMESTAMP,ContextTokens,GeneratedTokens`, wall-clock timestamps."""
    return load_csv_trace(path, "TIMESTAMP", "ContextTokens", "GeneratedTokens", time_unit="datetime")


def _json_int(obj: dict, key: str) -> tuple[int | None, str | None]:
    """(value, None) or (None, reason) for a non-negative whole-number field."""
    if key not in obj:
        return None, f"missing key {key!r}"
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        return None, f"{key} {v!r} is not an integer"
    if v < 0:
        return None, f"negative {key} {v}"
    return int(v), None


def load_mooncake_trace(path: str | Path) -> RequestTrace:
    """Mooncake JSONL: one object per line with `timestamp` (ms), `input_length`, `output_length`; other keys
    (hash_ids, ...) are ignored."""
    path = _existing(path)
    lines = _lines(path)
    if not lines:
        raise TraceError(path, [(1, "empty file (no rows)")])
    problems: list[tuple[int, str]] = []
    t: list[float] = []
    inp: list[int] = []
    out: list[int] = []
    line_nos: list[int] = []
    for ln, line in enumerate(lines, start=1):
        if not line.strip():
            problems.append((ln, "empty line"))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append((ln, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(obj, dict):
            problems.append((ln, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        row_ok = True
        ts = obj.get("timestamp")
        if ts is None:
            problems.append((ln, "missing timestamp"))
            row_ok = False
        elif isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
            problems.append((ln, f"timestamp {ts!r} is not a finite number"))
            row_ok = False
        a, why_a = _json_int(obj, "input_length")
        b, why_b = _json_int(obj, "output_length")
        for why in (why_a, why_b):
            if why:
                problems.append((ln, why))
                row_ok = False
        if row_ok:
            t.append(float(ts))
            inp.append(a)
            out.append(b)
            line_nos.append(ln)
    if problems:
        raise TraceError(path, problems)
    return _finish(path, np.array(t), np.array(line_nos), inp, out, TIME_UNITS["ms"])


def load_request_trace(path: str | Path, format: str | TraceFormat, **columns) -> RequestTrace:
    """Dispatch on `format` ("azure", "mooncake", "csv"); "csv" takes load_csv_trace's column mapping keywords."""
    format = format.value if isinstance(format, TraceFormat) else format
    if format != "csv" and columns:
        raise ValueError(f"load_request_trace: column mapping {sorted(columns)} only applies to format 'csv'")
    if format == "azure":
        return load_azure_trace(path)
    if format == "mooncake":
        return load_mooncake_trace(path)
    if format == "csv":
        return load_csv_trace(path, **columns)
    raise ValueError(f"load_request_trace: format must be one of {REQUEST_FORMATS}, got {format!r}")
