"""Cost model (a): measured iteration latencies (Splitwise perf_model.csv), interpolated.

The table holds, per (model, hardware, TP): prompt_time by prompt_size at batch 1 and by batch_size at prompt 512, and
token_time (one decode step) by batch_size; times in ms. Knots used here (averaged over repeated rows):
  prefill f(T): T = prompt_size at batch 1, then T = 512 * batch_size where that exceeds the largest batch-1 prompt;
  decode a[B]: token_time by batch_size over all rows of that batch size.
Sources of each number (the rest of the cost model is the roofline's, roofline.py):
  - every knot above is the table's, exactly: at the knot's own prompt lengths and decode context the model returns
    the measured mean;
  - the context terms come from the roofline: the table's token_time barely moves from 128 to 8,192 context tokens
    (its decode sweep reads little KV next to 140 GB of weights), so it cannot give them. Decode reads
    b = KV bytes per token / (tp W me) + attention FLOPs per context token; prefill attention q sum L^2. The knots
    are stored with the roofline's context term at their measured context taken out, so that adding it back
    reproduces the table;
  - KV capacity: device memory after weights, profiled activations and a reserve (roofline.kv_capacity_tokens);
  - PP > 1: one micro-batch's pass is the TP time plus the stage-to-stage sends, and pp micro-batches are in flight
    (IterationCost.pipeline_stages); the table has no PP rows.
An engine profile (serving.engines.profile, e.g. vLLM-CPU here) is a table in the same format whose hardware column is
the cluster's device name; it sweeps the decode context at fixed batch sizes, so `load_perf_table(path,
fit_context=True)` fits the decode context term b from its rows (per-batch intercepts a[B], one shared slope) in place
of the roofline's.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.costmodel import p2p_time
from common.topology import ClusterSpec
from serving.costmodel.iteration import IterationCost, ReplicaConfig, decode_base_table
from serving.costmodel.models import ModelSpec
from serving.costmodel.roofline import (
    DEFAULT_PARAMS,
    RooflineParams,
    context_terms,
    kv_capacity_tokens,
    replica_devices,
)

HARDWARE = {"A100-SXM4-80GB": "a100-80gb", "H100-SXM5-80GB": "h100-80gb"}
COLUMNS = ("model", "hardware", "prompt_size", "batch_size", "token_size", "prompt_time", "token_time", "tensor_parallel")


@dataclass(frozen=True)
class MeasuredCurves:
    prefill_tokens: tuple[float, ...]  # ascending knots T
    prefill_s: tuple[float, ...]  # seconds at each knot
    decode_batch: tuple[float, ...]  # ascending knots B
    decode_s: tuple[float, ...]  # seconds per decode step at each knot
    prefill_sq: tuple[float, ...] = ()  # sum of squared prompt lengths at each prefill knot (its attention work)
    decode_context: tuple[float, ...] = ()  # mean cached tokens of the batch at each decode knot, as measured
    # b fitted from the rows (fit_context=True), seconds per cached token in a decode step; None: the roofline's
    decode_s_per_ctx: float | None = None


@dataclass(frozen=True)
class MeasuredTable:
    path: str  # the CSV it came from
    curves: dict  # (model, hardware, tp) -> MeasuredCurves
    rows: tuple  # raw rows (model, hardware, tp, prompt_size, batch_size, prompt_s, token_s), for error reports

    def keys(self) -> list[tuple[str, str, int]]:
        return sorted(self.curves)


def fit_decode_context(batch, context, step_s) -> float:
    """b in step_s = a[batch] + b * context by least squares, one intercept a per batch size (rows [N] each); >= 0.
    Only batch sizes measured at two or more contexts inform b."""
    batch, context, step_s = (np.asarray(v, float) for v in (batch, context, step_s))
    levels = np.unique(batch)
    x = np.zeros((len(batch), len(levels) + 1))
    x[np.arange(len(batch)), np.searchsorted(levels, batch)] = 1.0
    x[:, -1] = context
    coef, *_ = np.linalg.lstsq(x, step_s, rcond=None)
    return max(float(coef[-1]), 0.0)


def load_perf_table(path: str | Path, fit_context: bool = False) -> MeasuredTable:
    """The table at `path`; with `fit_context`, each group's decode context term is fitted from its rows (an engine
    profile sweeps the context; Splitwise's table barely does, so it keeps the roofline's)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"measured cost table {path} not found (set paths.data_dir)")
    rows, gen = [], []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}")
        for line, r in enumerate(reader, start=2):
            try:
                rows.append((r["model"], r["hardware"], int(r["tensor_parallel"]), int(r["prompt_size"]),
                             int(r["batch_size"]), float(r["prompt_time"]) / 1e3, float(r["token_time"]) / 1e3))
                gen.append(int(r["token_size"]))
            except ValueError as e:
                raise ValueError(f"{path}:{line}: {e}") from None
    groups = defaultdict(list)
    for r, g in zip(rows, gen):
        groups[r[:3]].append((r, g))
    curves = {}
    for key, rs in groups.items():
        pre, dec, sq, ctx = defaultdict(list), defaultdict(list), {}, defaultdict(list)
        for row, g in rs:
            _, _, _, p, b, pt, tt = row
            if b == 1:
                pre[p].append(pt)
                sq[p] = float(p) ** 2
            dec[b].append(tt)
            # The decode sweep generates token_size tokens after the prompt: on average half of them are cached.
            ctx[b].append(b * (p + g / 2))
        max_single = max(pre)
        for (_, _, _, p, b, pt, _), _ in rs:
            if b > 1 and p * b > max_single:
                pre[p * b].append(pt)
                sq[p * b] = b * float(p) ** 2
        # A prefill time under half the previous knot's is a failed measurement (TP2 at 64 x 512 tokens reads 0.8 s
        # after 6.6 s at half the tokens): such knots are dropped. Small wobbles at short prompts are kept.
        tk = []
        for t in sorted(pre):
            if not tk or np.mean(pre[t]) > 0.5 * np.mean(pre[tk[-1]]):
                tk.append(t)
        bk = sorted(dec)
        curves[key] = MeasuredCurves(
            tuple(float(t) for t in tk), tuple(float(np.mean(pre[t])) for t in tk),
            tuple(float(b) for b in bk), tuple(float(np.mean(dec[b])) for b in bk),
            tuple(sq[t] for t in tk), tuple(float(np.mean(ctx[b])) for b in bk),
            fit_decode_context([r[4] for r, _ in rs], [r[4] * (r[3] + g / 2) for r, g in rs],
                               [r[6] for r, _ in rs]) if fit_context else None,
        )
    return MeasuredTable(str(path), curves, tuple(rows))


def hardware_key(cluster: ClusterSpec) -> str:
    """The table's hardware name for the cluster's device: Splitwise's for A100 / H100, else the device name itself
    (an engine profile is written under it)."""
    name = cluster.device.name
    return HARDWARE.get(name, name)


def measured_cost(
    table: MeasuredTable, model: ModelSpec, cluster: ClusterSpec, config: ReplicaConfig,
    params: RooflineParams = DEFAULT_PARAMS,
) -> IterationCost:
    key = (model.name, hardware_key(cluster), config.tp)
    if key not in table.curves:
        known = [k for k in table.keys() if k[:2] == key[:2]]
        raise ValueError(f"measured cost model: {table.path} has no rows for {key}; with this model and "
                         f"hardware it has TP {[k[2] for k in known]}")
    c = table.curves[key]
    devs = replica_devices(cluster, config)

    def pp_sends(tokens: float) -> float:
        act = tokens * model.hidden * model.bytes_per_param
        return sum(p2p_time(act, cluster, devs[s * config.tp - 1], devs[s * config.tp]) for s in range(1, config.pp))

    q, per_ctx = context_terms(model, cluster, config, params)
    if c.decode_s_per_ctx is not None:
        per_ctx = c.decode_s_per_ctx
    # The knots less the roofline's context term at the knot's measured context (kept >= half the measured time, so
    # a model whose roofline context cost is off cannot turn a knot negative).
    knots_pre = [max(s - q * sq, s / 2) for s, sq in zip(c.prefill_s, c.prefill_sq)]
    knots_dec = [max(s - per_ctx * x, s / 2) for s, x in zip(c.decode_s, c.decode_context)]
    pre = tuple(s + pp_sends(t) for t, s in zip(c.prefill_tokens, knots_pre))
    b = np.arange(params.max_num_seqs + 1)
    dec = np.asarray(decode_base_table(np.asarray(c.decode_batch), np.asarray(knots_dec), params.max_num_seqs))
    dec = dec + np.array([pp_sends(x) for x in b])
    return IterationCost(
        config=config,
        prefill_knots_tokens=c.prefill_tokens,
        prefill_knots_s=pre,
        prefill_s_per_sq_token=q,
        decode_base_s=tuple(float(x) for x in dec),
        decode_s_per_ctx_token=per_ctx,
        kv_capacity_tokens=kv_capacity_tokens(model, cluster, config, params),
        source="measured",
        pipeline_stages=config.pp,
    )


def supported_tps(table: MeasuredTable, model: ModelSpec, cluster: ClusterSpec) -> list[int]:
    hw = hardware_key(cluster)
    return sorted(k[2] for k in table.keys() if k[0] == model.name and k[1] == hw)
