"""Error of the roofline model (b) against the measured table (a), and the fit of its efficiency constants."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import least_squares

from common.topology import a100_80g_4x8, h100_80g_4x8
from serving.costmodel.iteration import ReplicaConfig
from serving.costmodel.measured import MeasuredTable, measured_cost
from serving.costmodel.models import MODELS
from serving.costmodel.roofline import DEFAULT_PARAMS, RooflineParams, roofline_cost

CLUSTERS = {"a100-80gb": a100_80g_4x8, "h100-80gb": h100_80g_4x8}


@dataclass(frozen=True)
class ErrorRow:
    model: str  # table model
    hardware: str  # table hardware
    tp: int  # tensor parallel degree
    phase: str  # "prefill" or "decode"
    mape: float  # mean |roofline - measured| / measured over the group's rows
    max_ape: float  # worst row
    rows: int  # rows compared


def _pairs(table: MeasuredTable, params: RooflineParams, select=None):
    """Yield (key, phase, roofline_s, model (a)_s) at every measured point (power-capped hardware skipped).

    Model (a) equals the table at its knots and interpolates the rest (batched 512-token prompts), which also leaves
    out the one failed measurement the table holds. The decode context is the prompt plus half of the 128 tokens
    the decode sweep generates.
    """
    cache = {}
    seen = set()
    for model, hw, tp, p, b, _, _ in table.rows:
        if hw not in CLUSTERS or model not in MODELS or (select and not select(model, hw, tp)):
            continue
        if (model, hw, tp, p, b) in seen:
            continue
        seen.add((model, hw, tp, p, b))
        key = (model, hw, tp)
        if key not in cache:
            cluster, cfg = CLUSTERS[hw](), ReplicaConfig(tp, 1)
            cache[key] = (roofline_cost(MODELS[model], cluster, cfg, params),
                          measured_cost(table, MODELS[model], cluster, cfg, params))
        rc, mc = cache[key]
        yield key, "prefill", rc.prefill_time(p * b, b * p * p), mc.prefill_time(p * b, b * p * p)
        yield key, "decode", rc.decode_time(b, b * (p + 64)), mc.decode_time(b, b * (p + 64))


def roofline_errors(table: MeasuredTable, params: RooflineParams = DEFAULT_PARAMS) -> list[ErrorRow]:
    groups: dict = {}
    for key, phase, pred, meas in _pairs(table, params):
        groups.setdefault((*key, phase), []).append(abs(pred - meas) / meas)
    return [ErrorRow(k[0], k[1], k[2], k[3], float(np.mean(v)), float(np.max(v)), len(v))
            for k, v in sorted(groups.items())]


def fit_roofline(table: MeasuredTable, model: str = "llama2-70b", hardware: str = "a100-80gb",
                 base: RooflineParams = DEFAULT_PARAMS) -> RooflineParams:
    """Least squares in log time for (compute_eff, memory_eff, overhead_s) on one model and hardware."""
    def make(z):
        return replace(base, compute_eff=float(z[0]), memory_eff=float(z[1]), overhead_s=float(z[2]))

    def resid(z):
        sel = lambda m, h, tp: m == model and h == hardware  # noqa: E731
        return np.array([np.log(p / m) for _, _, p, m in _pairs(table, make(z), sel)])

    z0 = np.array([base.compute_eff, base.memory_eff, base.overhead_s])
    res = least_squares(resid, z0, bounds=([0.05, 0.05, 0.0], [1.0, 1.0, 0.05]))
    return make(res.x)
