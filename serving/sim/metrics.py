"""Per-request latencies and per-run summaries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


# Not frozen: the Hydra schema nests this class, and OmegaConf makes a frozen dataclass read-only (no overrides).
@dataclass
class SLO:
    ttft_s: float = 5.0  # time to first token a request may take
    tpot_s: float = 0.2  # mean time per output token after the first


def request_latencies(arrival, first_token, finish, output_tokens) -> dict:
    """[R] arrays: ttft, tpot (0 for one-token outputs), e2e."""
    out = np.maximum(np.asarray(output_tokens), 1)
    ttft = first_token - arrival
    tpot = np.where(out > 1, (finish - first_token) / np.maximum(out - 1, 1), 0.0)
    return {"ttft_s": ttft, "tpot_s": tpot, "e2e_s": finish - arrival}


def summarize(arrival, first_token, finish, output_tokens, slo: SLO | None = None) -> dict:
    slo = SLO() if slo is None else slo
    lat = request_latencies(arrival, first_token, finish, output_tokens)
    span = float(np.nanmax(finish) - np.min(arrival)) if len(arrival) else 0.0
    ok = (lat["ttft_s"] <= slo.ttft_s) & (lat["tpot_s"] <= slo.tpot_s)
    q = lambda a, p: float(np.percentile(a, p))  # noqa: E731
    return {
        "requests": int(len(arrival)),
        "p50_latency_s": q(lat["e2e_s"], 50), "p99_latency_s": q(lat["e2e_s"], 99),
        "p50_ttft_s": q(lat["ttft_s"], 50), "p99_ttft_s": q(lat["ttft_s"], 99),
        "p50_tpot_s": q(lat["tpot_s"], 50), "p99_tpot_s": q(lat["tpot_s"], 99),
        "mean_latency_s": float(lat["e2e_s"].mean()),
        "throughput_rps": len(arrival) / span if span > 0 else float("nan"),
        "slo_attainment": float(ok.mean()),
        "goodput_rps": float(ok.sum()) / span if span > 0 else float("nan"),  # requests/s that met the SLO
    }
