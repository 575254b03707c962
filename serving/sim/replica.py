"""One replica's vLLM-like continuous-batching engine, advanced in steps between external events.

Notation: B running sequences, ctx[i] tokens of sequence i held in KV cache, rem[i] output tokens it still owes,
blocks of `block_size` tokens; a sequence holds ceil(ctx / block_size) blocks.
Scheduling at each iteration boundary (vLLM v0 order):
  1. prefill first: admit waiting requests FCFS while the batch stays under max_num_seqs and the token budget and
     the free blocks stay above the watermark (not right after a preemption, as vLLM does);
  2. otherwise one decode step for all running sequences; when the next step needs a block that is not free, preempt
     the most recently admitted sequence (recompute: it re-enters the queue head and later re-prefills prompt + output).
Decode steps between two events (an arrival, a finish, a full cache) are taken together in closed form: a step costs
a[B] + b * C with C growing by B per step, so m steps cost m a[B] + b (m C0 + B m (m - 1) / 2).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from serving.costmodel.iteration import IterationCost


@dataclass(frozen=True)
class EngineConfig:
    block_size: int = 16  # tokens per KV block (vLLM's default)
    max_num_seqs: int = 256  # sequences per batch
    max_batched_tokens: int = 8192  # prefill token budget per iteration (raised to max_model_len if smaller)
    watermark: float = 0.01  # share of blocks kept free when admitting (vLLM's watermark)


class Requests:
    """Per-request arrays shared by all replicas of one simulation ([R] each)."""

    def __init__(self, arrival_s, input_tokens, output_tokens):
        self.arrival = np.asarray(arrival_s, float)
        self.inp = np.asarray(input_tokens, np.int64)
        self.out = np.maximum(np.asarray(output_tokens, np.int64), 1)  # every request yields at least one token
        r = len(self.arrival)
        self.first_token = np.full(r, np.nan)
        self.finish = np.full(r, np.nan)
        self.generated = np.zeros(r, np.int64)
        self.replica = np.full(r, -1, np.int64)
        self.preemptions = np.zeros(r, np.int64)
        self.completions = np.zeros(r, np.int64)  # must end at exactly 1 for every request


class ReplicaEngine:
    def __init__(self, index: int, cost: IterationCost, reqs: Requests, cfg: EngineConfig, max_model_len: int):
        self.index = index
        self.reqs = reqs
        self.cfg = cfg
        self.bs = cfg.block_size
        self.num_blocks = cost.kv_capacity_tokens // cfg.block_size
        if self.num_blocks * cfg.block_size < max_model_len:
            raise ValueError(f"replica {index} ({cost.config}): KV cache of {cost.kv_capacity_tokens} tokens cannot "
                             f"hold one request of max_model_len {max_model_len}")
        self.watermark = int(cfg.watermark * self.num_blocks)
        self.budget = max(cfg.max_batched_tokens, max_model_len)
        self.max_seqs = min(cfg.max_num_seqs, cost.max_num_seqs)
        self.b = cost.decode_s_per_ctx_token
        self.cost = cost
        self.t = 0.0  # when the next iteration may start
        self.waiting: deque[int] = deque()
        self.ids = np.zeros(0, np.int64)  # [B] running request ids, in admission order
        self.ctx = np.zeros(0, np.int64)  # [B]
        self.rem = np.zeros(0, np.int64)  # [B]
        self.just_preempted = False
        self.outstanding = 0  # dispatched and not finished
        self.peak_blocks = 0
        self.iterations = 0
        self.busy_s = 0.0

    def enqueue(self, rid: int, now: float) -> None:
        if not self.waiting and self.ids.size == 0:
            self.t = max(self.t, now)  # an idle replica starts when work arrives
        self.waiting.append(rid)
        self.reqs.replica[rid] = self.index
        self.outstanding += 1

    def _blocks(self, ctx: np.ndarray) -> int:
        return int(((ctx + self.bs - 1) // self.bs).sum())

    def advance_until(self, t_limit: float) -> None:
        """Run every iteration that starts before t_limit (arrivals at t_limit or later are not yet known)."""
        while self.t < t_limit and (self.waiting or self.ids.size):
            if self.waiting and not self.just_preempted and self._prefill():
                continue
            if self.ids.size == 0:
                raise RuntimeError(f"replica {self.index}: waiting requests cannot be admitted to an empty engine")
            self._decode(t_limit)

    # Phase 1: prefill.
    def _prefill(self) -> bool:
        r = self.reqs
        free = self.num_blocks - self._blocks(self.ctx)
        batch, lens, tokens = [], [], 0
        while self.waiting and self.ids.size + len(batch) < self.max_seqs:
            rid = self.waiting[0]
            length = int(r.inp[rid] + r.generated[rid])  # a preempted request recomputes what it had
            need = -(-length // self.bs)
            if tokens + length > self.budget:
                break
            floor = 0 if (self.ids.size == 0 and not batch) else self.watermark
            if free - need < floor:
                break
            self.waiting.popleft()
            batch.append(rid)
            lens.append(length)
            tokens += length
            free -= need
        if not batch:
            return False
        lens_a = np.asarray(lens, np.int64)
        dur = self.cost.prefill_time(float(tokens), float((lens_a.astype(float) ** 2).sum()))
        self.t += dur
        self.busy_s += dur
        self.iterations += 1
        ids = np.asarray(batch, np.int64)
        first = np.isnan(r.first_token[ids])
        r.first_token[ids[first]] = self.t
        r.generated[ids] += 1  # the prefill's forward pass yields the next token
        rem = r.out[ids] - r.generated[ids]
        self._finish(ids[rem <= 0])
        keep = rem > 0
        self.ids = np.concatenate([self.ids, ids[keep]])
        self.ctx = np.concatenate([self.ctx, lens_a[keep]])
        self.rem = np.concatenate([self.rem, rem[keep]])
        self.peak_blocks = max(self.peak_blocks, self._blocks(self.ctx))
        return True

    # Phase 2: decode (possibly several steps at once).
    def _decode(self, t_limit: float) -> None:
        while True:
            B = self.ids.size
            m = int(self.rem.min())
            if self.waiting and self.just_preempted:
                m = 1  # the queue head may be admitted after this step
            a = self.cost.decode_base(B)
            c0 = float(self.ctx.sum())
            m = min(m, self._steps_before(t_limit, a, c0, B))
            if self._blocks(self.ctx + m) > self.num_blocks:
                lo, hi = 0, m  # largest m whose cache fits: blocks(ctx + m) is increasing in m
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if self._blocks(self.ctx + mid) <= self.num_blocks:
                        lo = mid
                    else:
                        hi = mid - 1
                m = lo
            if m > 0:
                break
            self._preempt()
        dur = m * a + self.b * (m * c0 + B * m * (m - 1) / 2)
        self.t += dur
        self.busy_s += dur
        self.iterations += m
        self.just_preempted = False
        self.ctx = self.ctx + m
        self.rem = self.rem - m
        self.reqs.generated[self.ids] += m
        self.peak_blocks = max(self.peak_blocks, self._blocks(self.ctx))
        done = self.rem == 0
        if done.any():
            self._finish(self.ids[done])
            keep = ~done
            self.ids, self.ctx, self.rem = self.ids[keep], self.ctx[keep], self.rem[keep]

    def _steps_before(self, t_limit: float, a: float, c0: float, B: int) -> int:
        """How many consecutive decode steps start before t_limit (step i starts at t + i a + b (i c0 + B i(i-1)/2))."""
        if math.isinf(t_limit):
            return 1 << 60
        gap = t_limit - self.t
        qa, qb = self.b * B / 2, a + self.b * c0 - self.b * B / 2
        if qa <= 0:
            return max(1, math.ceil(gap / qb))
        root = (-qb + math.sqrt(qb * qb + 4 * qa * gap)) / (2 * qa)
        return max(1, math.ceil(root))

    def _preempt(self) -> None:
        if self.ids.size <= 1:
            raise RuntimeError(f"replica {self.index}: one sequence overflows the KV cache")
        rid = int(self.ids[-1])
        self.ids, self.ctx, self.rem = self.ids[:-1], self.ctx[:-1], self.rem[:-1]
        self.waiting.appendleft(rid)
        self.reqs.preemptions[rid] += 1
        self.just_preempted = True

    def _finish(self, ids: np.ndarray) -> None:
        if ids.size:
            self.reqs.finish[ids] = self.t
            self.reqs.completions[ids] += 1
            self.outstanding -= int(ids.size)
