"""Profile a live replica's iteration latencies into the cost model's table format (serving.costmodel.measured).

Each point (prompt size p, batch size b, output tokens g) sends b requests of p-token prompts at once, each asking
for exactly g tokens, through `Replica.generate` (the path the router uses: Ray streaming into the actor's engine),
and reads the chunks' arrival times:
  prompt_time = until the last of the b requests has its first token (the batch's prefill iteration(s));
  token_time  = per request, (last chunk - first chunk) / (g - 1), the median over the b requests (one decode step
                at batch b with, on average, p + g / 2 tokens cached per sequence).
Each point is measured `repeats` times and the median kept (the machine may be shared). The rows are those of the
Splitwise perf table, so `load_perf_table(path, fit_context=True)` turns them into an IterationCost: batch-1 prompts
give the prefill curve f(T), the decode sweep at two prompt sizes gives a[B] and the context slope b.

    rows = await profile_replica(replica, ProfileGrid(), model="tiny-llama", hardware=cluster.device.name)
    write_perf_table(rows, run_dir / "profile.csv")
"""

from __future__ import annotations

import asyncio
import csv
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from common.topology import ClusterSpec
from serving.costmodel.base import CostModel, CostModelKind
from serving.costmodel.measured import COLUMNS, MeasuredTable
from serving.costmodel.models import ModelSpec
from serving.costmodel.roofline import RooflineParams
from serving.loadgen import prompt_ids


# Not frozen: the Hydra schema nests this class, and OmegaConf makes a frozen dataclass read-only (no overrides).
@dataclass
class ProfileGrid:
    prefill_prompts: list[int] = field(default_factory=lambda: [8, 32, 64, 128, 256])  # p swept at batch 1
    decode_batches: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])  # b swept at each decode prompt
    decode_prompts: list[int] = field(default_factory=lambda: [16, 128])  # two contexts, so the slope b is fitted
    output_tokens: int = 16  # g: tokens generated per request (the decode steps timed per point)
    repeats: int = 5  # measurements per point; the median is kept


@dataclass(frozen=True)
class ProfileRow:
    model: str  # the table's model key (serving.costmodel.models name)
    hardware: str  # the table's hardware key: the cluster's device name
    prompt_size: int  # p
    batch_size: int  # b
    token_size: int  # g
    prompt_time: float  # ms, the batch's prefill (Splitwise's unit)
    token_time: float  # ms, one decode step at batch b
    tensor_parallel: int  # the replica's TP


async def time_batch(replica, p: int, b: int, g: int, tag: str, first: int = 0) -> tuple[float, float]:
    """(prefill s, decode step s) of one batch of b p-token requests generating g tokens each; their prompts are
    loadgen prompts `first`.. (distinct, so no prefix cache hides a prefill)."""
    sampling = {"max_tokens": g, "ignore_eos": True, "temperature": 0.0}

    async def one(i: int):
        stamps = []  # (time, tokens so far)
        n = 0
        async for c in replica.generate(f"{tag}-{i}", prompt_ids(first + i, p), sampling):
            n += len(c.token_ids)
            stamps.append((time.perf_counter(), n))
        return stamps

    t0 = time.perf_counter()
    runs = await asyncio.gather(*[one(i) for i in range(b)])
    prefill = max(s[0][0] for s in runs) - t0
    steps = [(s[-1][0] - s[0][0]) / (s[-1][1] - s[0][1]) for s in runs if s[-1][1] > s[0][1]]
    return prefill, float(np.median(steps)) if steps else float("nan")


def grid_points(grid: ProfileGrid, max_model_len: int) -> list[tuple[int, int]]:
    """(p, b) points of the grid, each once, with prompts that leave room for g output tokens."""
    cap = max_model_len - grid.output_tokens
    pts = [(min(p, cap), 1) for p in grid.prefill_prompts]
    pts += [(min(p, cap), b) for p in grid.decode_prompts for b in grid.decode_batches]
    return list(dict.fromkeys(pts))


async def profile_replica(replica, grid: ProfileGrid, model: str, hardware: str, max_model_len: int) -> list[ProfileRow]:
    """One row per grid point (module docstring); the replica should serve nothing else meanwhile. The repeats go
    round the whole grid, so a burst of load from elsewhere spoils one repeat of several points, not one point."""
    g = int(grid.output_tokens)
    if g < 2:
        raise ValueError(f"profile.output_tokens: {g}; at least 2 tokens are needed to time a decode step")
    points = grid_points(grid, max_model_len)
    pre = [[] for _ in points]
    dec = [[] for _ in points]
    first = 1_000_000  # prompt indices above any replayed trace's
    for r in range(int(grid.repeats)):
        for n, (p, b) in enumerate(points):
            a, d = await time_batch(replica, p, b, g, f"profile-{replica.name}-{n}-{r}", first)
            first += b
            pre[n].append(a)
            dec[n].append(d)
    return [ProfileRow(model, hardware, p, b, g, 1e3 * float(np.median(pre[n])), 1e3 * float(np.median(dec[n])),
                       int(replica.config.tp)) for n, (p, b) in enumerate(points)]


async def profile_together(replicas, grid: ProfileGrid, model: str, hardware: str,
                           max_model_len: int) -> list[ProfileRow]:
    """Profile every replica at the same time (they contend for the machine as they do when all serve) and keep,
    per point, the median over replicas."""
    per = await asyncio.gather(*[profile_replica(r, grid, model, hardware, max_model_len) for r in replicas])
    return [replace(rows[0], prompt_time=float(np.median([r.prompt_time for r in rows])),
                    token_time=float(np.median([r.token_time for r in rows]))) for rows in zip(*per)]


def write_perf_table(rows: list[ProfileRow], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows(asdict(r) for r in rows)
    return path


def model_spec(model_dir: str, dtype: str, max_model_len: int) -> ModelSpec:
    """The served model's shape (serving.costmodel.ModelSpec) from its Hugging Face config; its name, the profile
    table's model key, is the directory's name."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    bytes_per = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}.get(str(dtype), 2)
    return ModelSpec(Path(model_dir).name, int(c.num_hidden_layers), int(c.hidden_size), int(c.intermediate_size),
                     int(c.num_attention_heads), int(getattr(c, "num_key_value_heads", None) or c.num_attention_heads),
                     int(c.vocab_size), gated_mlp=True, bytes_per_param=bytes_per, context_len=int(max_model_len))


def engine_cluster(num_devices: int, kv_cache_bytes: float, model: ModelSpec, cluster: ClusterSpec) -> ClusterSpec:
    """`cluster` (this machine's profile, common.topology.local_cpu) as `num_devices` replica slots whose memory is
    what vLLM was given: the weights plus the KV-cache space (VLLM_CPU_KVCACHE_SPACE), so the cost model's KV
    capacity is the engine's."""
    dev = replace(cluster.device, memory_bytes=float(kv_cache_bytes + model.weight_bytes))
    return replace(cluster, num_nodes=1, devices_per_node=int(num_devices), device=dev)


def profile_cost_model(table: MeasuredTable, model: ModelSpec, cluster: ClusterSpec, max_num_seqs: int,
                       max_batched_tokens: int, max_model_len: int) -> CostModel:
    """The measured cost model over an engine profile: every memory term is the engine's own (no utilisation cap,
    no reserve beyond the profiled activations), sized at the engine's batch limits."""
    params = RooflineParams(gpu_memory_util=1.0, activation_reserve_bytes=0.0, max_num_seqs=int(max_num_seqs),
                            max_num_batched_tokens=int(max_batched_tokens))
    return CostModel(model, cluster, CostModelKind.measured, table=table, params=params, max_model_len=max_model_len)
