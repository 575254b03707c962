"""TEMPORARY stand-in for common.traces / common.stats (being written on the `common` branch, same API).

Delete this file and import from common once those modules are on main.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

FORMATS = ("azure", "mooncake", "csv")


class TraceError(ValueError):
    pass


@dataclass(frozen=True)
class RequestTrace:
    arrival_s: np.ndarray  # [R] float64 from 0, non-decreasing
    input_tokens: np.ndarray  # [R] int64
    output_tokens: np.ndarray  # [R] int64
    source: str = ""

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) else 0.0

    def slice(self, t0: float, t1: float) -> RequestTrace:
        m = (self.arrival_s >= t0) & (self.arrival_s < t1)
        return RequestTrace(self.arrival_s[m] - t0, self.input_tokens[m], self.output_tokens[m], self.source)

    def scale_rate(self, factor: float) -> RequestTrace:
        if not factor > 0:
            raise ValueError(f"rate scale must be > 0, got {factor}")
        return RequestTrace(self.arrival_s / factor, self.input_tokens, self.output_tokens, self.source)


def load_request_trace(path: str | Path, format: str) -> RequestTrace:
    if format not in FORMATS:
        raise ValueError(f"unknown request-trace format {format!r}; known: {list(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"request trace {path} not found")
    if format != "azure":
        raise NotImplementedError(f"format {format!r} arrives with common.traces")
    t, i, o = [], [], []
    with path.open(newline="") as fh:
        for line, r in enumerate(csv.DictReader(fh), start=2):
            try:
                t.append(datetime.fromisoformat(r["TIMESTAMP"][:26]).timestamp())
                i.append(int(r["ContextTokens"]))
                o.append(int(r["GeneratedTokens"]))
            except (KeyError, ValueError, TypeError) as e:
                raise TraceError(f"{path}:{line}: {e!r}") from None
    t = np.asarray(t)
    return RequestTrace(t - t[0], np.asarray(i, np.int64), np.asarray(o, np.int64), str(path))


@dataclass(frozen=True)
class RequestTypes:
    centers: np.ndarray  # [K, 2] in (log1p in, log1p out)

    def assign(self, inp, out) -> np.ndarray:
        x = np.stack([np.log1p(inp), np.log1p(out)], axis=1)
        return np.argmin(((x[:, None, :] - self.centers[None]) ** 2).sum(-1), axis=1)


def fit_request_types(inp, out, k: int = 4, seed: int = 0) -> RequestTypes:
    x = np.stack([np.log1p(inp), np.log1p(out)], axis=1).astype(float)
    rng = np.random.default_rng(seed)
    c = x[rng.choice(len(x), size=k, replace=False)]
    for _ in range(100):
        lab = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        new = np.array([x[lab == j].mean(0) if np.any(lab == j) else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return RequestTypes(c[np.argsort(c.sum(1))])
