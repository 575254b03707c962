from pathlib import Path

import numpy as np
import pytest

DATA = Path("/work/shared/data")
from common.datapaths import resolve_data_dir  # noqa: E402


def data_dir() -> Path:
    d = resolve_data_dir(None, env=__import__("os").environ)
    return d if (d / "splitwise_sim_perf_model").is_dir() else DATA


@pytest.fixture
def real_data():
    d = data_dir()
    if not (d / "splitwise_sim_perf_model" / "perf_model.csv").exists():
        pytest.skip(f"real data not found under {d} (set LOADWISE_DATA_DIR)")
    return d


def write_azure_csv(path: Path, arrival_s, inp, out) -> Path:
    """A trace in the Azure 2023 format (what common.synthetic will provide once merged)."""
    from datetime import datetime, timedelta

    t0 = datetime(2023, 11, 16, 18, 0, 0)
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for t, i, o in zip(arrival_s, inp, out):
        lines.append(f"{(t0 + timedelta(seconds=float(t))).strftime('%Y-%m-%d %H:%M:%S.%f')}0,{int(i)},{int(o)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def synthetic_requests(n=400, rate=4.0, seed=0):
    """Two request populations (short chat-like, long code-like), Poisson arrivals."""
    rng = np.random.default_rng(seed)
    long = rng.random(n) < 0.3
    inp = np.where(long, rng.integers(1500, 4000, n), rng.integers(50, 400, n))
    out = np.where(long, rng.integers(100, 400, n), rng.integers(5, 60, n))
    arr = np.cumsum(rng.exponential(1 / rate, n))
    return arr - arr[0], inp.astype(np.int64), out.astype(np.int64)
