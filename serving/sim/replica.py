"""One replica's vLLM-like continuous-batching engine, advanced in steps between external events.

Notation: B running sequences; per sequence ctx[i] tokens held in KV cache (computed), pend[i] known tokens not yet
computed (the rest of a prompt while it prefills, 1 while it decodes), rem[i] output tokens it still owes; blocks of
`block_size` tokens, a sequence holding ceil(ctx / block_size) of them. A step computes k[i] <= pend[i] tokens of each
scheduled sequence; one whose pend reaches 0 samples its next token (the first one ends its prefill).

Scheduling at each iteration boundary, by `EngineConfig.policy`:
  v1 (vLLM V1, the default; chunked prefill always on):
    1. running sequences in admission order take min(pend, budget left) tokens of the max_num_batched_tokens
       budget (decodes 1, an unfinished prompt its next chunk); when their blocks do not fit, preempt the most
       recently admitted sequence (recompute: it re-enters the queue head and later recomputes prompt + output);
    2. unless step 1 preempted, admit waiting requests FCFS while the budget lasts, sequences stay under
       max_num_seqs and the first chunk's blocks are free; the last one admitted may take a partial chunk;
    3. one mixed forward pass: IterationCost.step_time(prompt tokens, their attention, decodes, decode context).
  v0 (vLLM v0's default, prefill first): whole prompts of waiting requests are admitted FCFS under the budget
    (raised to max_model_len) and max_num_seqs with the free blocks above the watermark (not right after a
    preemption); otherwise one decode step for all running sequences, preempting the newest when the cache is full.
Pure decode steps between two events (an arrival, a finish, a full cache) are taken together in closed form: a step
costs a[B] + b * C with C growing by B per step, so m steps cost m a[B] + b (m C0 + B m (m - 1) / 2).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import Enum

import numpy as np

from serving.costmodel.iteration import IterationCost


class SchedulingPolicy(Enum):
    """How a replica builds each iteration (module docstring). Lower-case names: OmegaConf matches a config value to
    the member's name."""

    v1 = "v1"  # vLLM V1: chunked prefill, prompt chunks and decodes in one batch under the token budget
    v0 = "v0"  # vLLM v0: whole prompts first, decodes only when nothing waiting can be admitted


@dataclass(frozen=True)
class EngineConfig:
    block_size: int = 16  # tokens per KV block (vLLM's default)
    max_num_seqs: int = 256  # sequences per batch
    # Tokens per iteration (vLLM's max_num_batched_tokens); v0 raises it to max_model_len so a whole prompt fits.
    max_batched_tokens: int = 8192
    watermark: float = 0.01  # share of blocks kept free when admitting (vLLM v0's watermark; V1 has none)
    policy: SchedulingPolicy = SchedulingPolicy.v1  # how each iteration is built


class Requests:
    """Per-request arrays shared by all replicas of one simulation ([R] each)."""

    def __init__(self, arrival_s, input_tokens, output_tokens):
        self.arrival = np.asarray(arrival_s, float)
        self.inp = np.asarray(input_tokens, np.int64)
        self.out = np.maximum(np.asarray(output_tokens, np.int64), 1)  # every request yields at least one token
        r = len(self.arrival)
        self.scheduled = np.full(r, np.nan)  # when its first prompt tokens were computed (end of queueing)
        self.first_token = np.full(r, np.nan)
        self.finish = np.full(r, np.nan)
        self.generated = np.zeros(r, np.int64)
        self.replica = np.full(r, -1, np.int64)
        self.preemptions = np.zeros(r, np.int64)
        self.preempted_s = np.zeros(r)  # seconds spent back in the queue after preemptions
        self.preempted_at = np.full(r, np.nan)
        self.completions = np.zeros(r, np.int64)  # must end at exactly 1 for every request


class ReplicaEngine:
    """One engine: a replica without pipeline parallelism, or one of a pipelined replica's micro-batch slots."""

    def __init__(self, index: int, cost: IterationCost, reqs: Requests, cfg: EngineConfig, max_model_len: int,
                 kv_tokens: int | None = None):
        self.index = index
        self.reqs = reqs
        self.cfg = cfg
        self.bs = cfg.block_size
        kv = cost.kv_capacity_tokens if kv_tokens is None else kv_tokens
        self.num_blocks = kv // cfg.block_size
        if self.num_blocks * cfg.block_size < max_model_len:
            raise ValueError(f"replica {index} ({cost.config}): KV cache of {kv} tokens"
                             + (" per micro-batch" if kv_tokens is not None else "")
                             + f" cannot hold one request of max_model_len {max_model_len}")
        self.v1 = cfg.policy is SchedulingPolicy.v1
        self.watermark = 0 if self.v1 else int(cfg.watermark * self.num_blocks)
        self.budget = cfg.max_batched_tokens if self.v1 else max(cfg.max_batched_tokens, max_model_len)
        if self.budget < 1:
            raise ValueError(f"EngineConfig.max_batched_tokens must be >= 1, got {cfg.max_batched_tokens}")
        self.max_seqs = min(cfg.max_num_seqs, cost.max_num_seqs)
        self.b = cost.decode_s_per_ctx_token
        self.cost = cost
        self.t = 0.0  # when the next iteration may start
        self.waiting: deque[int] = deque()
        self.ids = np.zeros(0, np.int64)  # [B] running request ids, in admission order
        self.ctx = np.zeros(0, np.int64)  # [B] tokens in KV cache
        self.pend = np.zeros(0, np.int64)  # [B] tokens to compute before the next sample
        self.rem = np.zeros(0, np.int64)  # [B] output tokens still owed
        self.just_preempted = False
        self.prefilling = False  # some running sequence still has prompt tokens to compute (v1)
        self.outstanding = 0  # dispatched and not finished
        self.outstanding_tokens = 0  # their prompt + output tokens
        self.peak_blocks = 0
        self.iterations = 0
        self.busy_s = 0.0

    def enqueue(self, rid: int, now: float) -> None:
        if not self.waiting and self.ids.size == 0:
            self.t = max(self.t, now)  # an idle replica starts when work arrives
        self.waiting.append(rid)
        self.reqs.replica[rid] = self.index
        self.outstanding += 1
        self.outstanding_tokens += int(self.reqs.inp[rid] + self.reqs.out[rid])

    def _blocks(self, ctx: np.ndarray) -> int:
        return int(((ctx + self.bs - 1) // self.bs).sum())

    # ---- a time-varying deployment (serving/sim/timeline.py): start late, hand requests over, show what is held ---

    def start_at(self, t: float) -> None:
        """A replica being built: no iteration starts before t (when its weights are in place)."""
        self.t = max(self.t, t)

    def held(self) -> list[tuple[int, int, int]]:
        """(request, KV tokens held, output tokens still owed) of every dispatched, unfinished request; a waiting one
        holds no KV (a preempted one recomputes)."""
        r = self.reqs
        out = [(int(i), int(c), int(m)) for i, c, m in zip(self.ids, self.ctx, self.rem)]
        return out + [(int(i), 0, int(r.out[i] - r.generated[i])) for i in self.waiting]

    def release(self, rid: int) -> tuple[int, int, int] | None:
        """Take request rid off this engine (its KV leaves with it): (ctx, pend, rem), or None when it is not here
        (already finished). A waiting request leaves with no KV (ctx 0)."""
        hit = np.flatnonzero(self.ids == rid)
        if hit.size:
            i = int(hit[0])
            state = (int(self.ctx[i]), int(self.pend[i]), int(self.rem[i]))
            keep = np.arange(self.ids.size) != i
            self.ids, self.ctx, self.pend, self.rem = self.ids[keep], self.ctx[keep], self.pend[keep], self.rem[keep]
            self.prefilling = bool((self.pend != 1).any())
        elif rid in self.waiting:
            self.waiting.remove(rid)
            state = (0, 0, int(self.reqs.out[rid] - self.reqs.generated[rid]))
        else:
            return None
        self.outstanding -= 1
        self.outstanding_tokens -= int(self.reqs.inp[rid] + self.reqs.out[rid])
        return state

    def adopt(self, rid: int, ctx: int, pend: int, rem: int, now: float) -> None:
        """Continue request rid here from its moved KV (ctx tokens, pend still to compute, rem owed) at `now`. With
        no KV, or when it does not fit the free blocks or the batch, it queues at the head and recomputes (as a
        preempted request would)."""
        if ctx <= 0 or self.ids.size >= self.max_seqs or self._blocks(self.ctx) + -(-(ctx + pend) // self.bs) > \
                self.num_blocks:
            self.enqueue(rid, now)
            if ctx > 0:  # it had KV that found no room: back to the queue head, as vLLM preempts
                self.waiting.remove(rid)
                self.waiting.appendleft(rid)
                self.reqs.preemptions[rid] += 1
                self.reqs.preempted_at[rid] = max(self.t, now)
            return
        if self.ids.size == 0 and not self.waiting:
            self.t = max(self.t, now)
        self.reqs.replica[rid] = self.index
        self.ids = np.concatenate([self.ids, [rid]]).astype(np.int64)
        self.ctx = np.concatenate([self.ctx, [ctx]]).astype(np.int64)
        self.pend = np.concatenate([self.pend, [pend]]).astype(np.int64)
        self.rem = np.concatenate([self.rem, [rem]]).astype(np.int64)
        self.prefilling = bool((self.pend != 1).any())
        self.outstanding += 1
        self.outstanding_tokens += int(self.reqs.inp[rid] + self.reqs.out[rid])

    def advance_until(self, t_limit: float) -> None:
        """Run every iteration that starts before t_limit (arrivals at t_limit or later are not yet known)."""
        while self.t < t_limit and (self.waiting or self.ids.size):
            if self.v1:
                if not self._decode_only_ahead() or not self._decode(t_limit, preempt=False):
                    self._step_v1()
                continue
            if self.waiting and not self.just_preempted and self._prefill():
                continue
            if self.ids.size == 0:
                raise RuntimeError(f"replica {self.index}: waiting requests cannot be admitted to an empty engine")
            self._decode(t_limit)

    # ---- v1: one mixed step --------------------------------------------------------------------------------------

    def _decode_only_ahead(self) -> bool:
        """True when the next step schedules decodes only: every running sequence decodes, and the queue head could
        not be admitted (too many sequences, or its first chunk's blocks not free once the decodes have grown)."""
        if self.ids.size == 0 or self.prefilling:
            return False
        if not self.waiting:
            return True
        left = self.budget - self.ids.size
        if self.ids.size >= self.max_seqs or left <= 0:
            return True
        rid = self.waiting[0]
        k = min(int(self.reqs.inp[rid] + self.reqs.generated[rid]), left)
        return self.num_blocks - self._blocks(self.ctx + 1) < -(-k // self.bs)

    def _step_v1(self) -> None:
        r = self.reqs
        budget = self.budget
        # Step 1: running sequences first, each taking min(pend, budget left); cumsum gives every k at once.
        before = np.concatenate([[0], np.cumsum(self.pend)[:-1]]) if self.ids.size else np.zeros(0, np.int64)
        k = np.clip(budget - before, 0, self.pend).astype(np.int64)
        used = self._blocks(self.ctx)
        grow = ((self.ctx + k + self.bs - 1) // self.bs) - ((self.ctx + self.bs - 1) // self.bs)
        preempted = used + int(grow.sum()) > self.num_blocks
        if preempted:  # preempt the newest while the scheduled ones' blocks do not fit, one sequence at a time
            i = 0
            while i < self.ids.size and budget > 0:
                k[i] = min(int(self.pend[i]), budget)
                g = -(-int(self.ctx[i] + k[i]) // self.bs) - (-(-int(self.ctx[i]) // self.bs))
                while used + g > self.num_blocks and i < self.ids.size:
                    last = self.ids.size - 1
                    used -= -(-int(self.ctx[last]) // self.bs)
                    self._preempt()
                    k = k[:last]
                if i >= self.ids.size:
                    break
                used += g
                budget -= int(k[i])
                i += 1
            k = np.pad(k[:i], (0, self.ids.size - i))
        else:
            used += int(grow.sum())
            budget -= int(k.sum())
        # Step 2: admit from the queue (not after a preemption).
        if not preempted:
            new_ids, new_k = [], []
            while self.waiting and budget > 0 and self.ids.size + len(new_ids) < self.max_seqs:
                rid = self.waiting[0]
                length = int(r.inp[rid] + r.generated[rid])  # a preempted request recomputes what it had
                kk = min(length, budget)
                need = -(-kk // self.bs)
                if used + need > self.num_blocks:
                    break
                self.waiting.popleft()
                self._resume(rid)
                new_ids.append(rid)
                new_k.append(kk)
                used += need
                budget -= kk
            if new_ids:
                n = len(new_ids)
                lengths = r.inp[new_ids] + r.generated[new_ids]
                self.ids = np.concatenate([self.ids, np.asarray(new_ids, np.int64)])
                self.ctx = np.concatenate([self.ctx, np.zeros(n, np.int64)])
                self.pend = np.concatenate([self.pend, lengths])
                self.rem = np.concatenate([self.rem, r.out[new_ids] - r.generated[new_ids]])
                k = np.concatenate([k, np.asarray(new_k, np.int64)])
        if k.size < self.ids.size:
            k = np.concatenate([k, np.zeros(self.ids.size - k.size, np.int64)])
        if not k.any():
            if self.ids.size == 0 and self.waiting:
                raise RuntimeError(f"replica {self.index}: waiting requests cannot be admitted to an empty engine")
            return
        # Step 3: one forward pass.
        dec = (k == 1) & (self.pend == 1)
        pre = (k > 0) & ~dec
        c, kk = self.ctx[pre].astype(float), k[pre].astype(float)
        dur = self.cost.step_time(float(kk.sum()), float(((c + kk) ** 2 - c**2).sum()), int(dec.sum()),
                                  float(self.ctx[dec].sum()))
        first_chunk = pre & (self.ctx == 0)
        fresh = self.ids[first_chunk]
        r.scheduled[fresh[np.isnan(r.scheduled[fresh])]] = self.t
        self.t += dur
        self.busy_s += dur
        self.iterations += 1
        self.ctx = self.ctx + k
        self.pend = self.pend - k
        self.peak_blocks = max(self.peak_blocks, self._blocks(self.ctx))
        sampled = (k > 0) & (self.pend == 0)
        ids = self.ids[sampled]
        first = np.isnan(r.first_token[ids])
        r.first_token[ids[first]] = self.t
        r.generated[ids] += 1
        self.rem[sampled] -= 1
        self.pend[sampled] = 1
        self._drop_done()
        self.prefilling = bool((self.pend != 1).any())

    def _resume(self, rid: int) -> None:
        if not math.isnan(self.reqs.preempted_at[rid]):
            self.reqs.preempted_s[rid] += self.t - self.reqs.preempted_at[rid]
            self.reqs.preempted_at[rid] = np.nan

    def _drop_done(self) -> None:
        done = self.rem <= 0
        if done.any():
            self._finish(self.ids[done])
            keep = ~done
            self.ids, self.ctx, self.pend, self.rem = self.ids[keep], self.ctx[keep], self.pend[keep], self.rem[keep]

    # ---- v0 phase 1: prefill ------------------------------------------------------------------------------------

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
            self._resume(rid)
            batch.append(rid)
            lens.append(length)
            tokens += length
            free -= need
        if not batch:
            return False
        lens_a = np.asarray(lens, np.int64)
        dur = self.cost.prefill_time(float(tokens), float((lens_a.astype(float) ** 2).sum()))
        ids = np.asarray(batch, np.int64)
        r.scheduled[ids[np.isnan(r.scheduled[ids])]] = self.t
        self.t += dur
        self.busy_s += dur
        self.iterations += 1
        first = np.isnan(r.first_token[ids])
        r.first_token[ids[first]] = self.t
        r.generated[ids] += 1  # the prefill's forward pass yields the next token
        rem = r.out[ids] - r.generated[ids]
        self._finish(ids[rem <= 0])
        keep = rem > 0
        self.ids = np.concatenate([self.ids, ids[keep]])
        self.ctx = np.concatenate([self.ctx, lens_a[keep]])
        self.pend = np.concatenate([self.pend, np.ones(int(keep.sum()), np.int64)])
        self.rem = np.concatenate([self.rem, rem[keep]])
        self.peak_blocks = max(self.peak_blocks, self._blocks(self.ctx))
        return True

    # ---- decode (possibly several steps at once; v0 phase 2, and v1 while only decodes are ahead) ---------------

    def _decode(self, t_limit: float, preempt: bool = True) -> bool:
        """Take m >= 1 decode steps in closed form; without `preempt`, return False (nothing done) when not even
        one step fits the cache."""
        while True:
            B = self.ids.size
            m = int(self.rem.min())
            if self.waiting and self.just_preempted:
                m = 1  # the queue head may be admitted after this step
            a = self.cost.decode_base(B)
            c0 = float(self.ctx.sum())
            m = min(m, self._steps_before(t_limit, a, c0, B))
            # Growing m tokens adds at most ceil(m / bs) blocks per sequence: only count exactly when that could
            # overflow.
            if (self._blocks(self.ctx) + B * -(-m // self.bs) > self.num_blocks
                    and self._blocks(self.ctx + m) > self.num_blocks):
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
            if not preempt:
                return False
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
        self._drop_done()
        return True

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
        self.ids, self.ctx, self.pend, self.rem = self.ids[:-1], self.ctx[:-1], self.pend[:-1], self.rem[:-1]
        self.waiting.appendleft(rid)
        self.prefilling = bool((self.pend != 1).any())
        self.reqs.preemptions[rid] += 1
        self.reqs.preempted_at[rid] = self.t
        self.just_preempted = True

    def _finish(self, ids: np.ndarray) -> None:
        if ids.size:
            self.reqs.finish[ids] = self.t
            self.reqs.completions[ids] += 1
            self.outstanding -= int(ids.size)
            self.outstanding_tokens -= int((self.reqs.inp[ids] + self.reqs.out[ids]).sum())


class PipelinedReplica:
    """A replica with pp > 1 pipeline stages: vLLM keeps pp micro-batches in flight, one per stage, each with its own
    share of the KV cache (v0 splits the blocks per virtual engine). Each micro-batch is an engine whose iteration is
    one pass through all stages (IterationCost times), and the pp of them run side by side; stage contention between
    unequal micro-batches is not modelled. Idle slots are the pipeline bubble. A request joins the slot with the
    fewest outstanding tokens."""

    def __init__(self, index: int, cost: IterationCost, reqs: Requests, cfg: EngineConfig, max_model_len: int):
        pp = cost.pipeline_stages
        self.index = index
        self.slots = [ReplicaEngine(index, cost, reqs, cfg, max_model_len, kv_tokens=cost.kv_capacity_tokens // pp)
                      for _ in range(pp)]

    @property
    def outstanding(self) -> int:
        return sum(s.outstanding for s in self.slots)

    @property
    def outstanding_tokens(self) -> int:
        return sum(s.outstanding_tokens for s in self.slots)

    @property
    def num_blocks(self) -> int:
        return sum(s.num_blocks for s in self.slots)

    @property
    def peak_blocks(self) -> int:
        return sum(s.peak_blocks for s in self.slots)

    @property
    def iterations(self) -> int:
        return sum(s.iterations for s in self.slots)

    def enqueue(self, rid: int, now: float) -> None:
        min(self.slots, key=lambda s: s.outstanding_tokens).enqueue(rid, now)

    def advance_until(self, t_limit: float) -> None:
        for s in self.slots:
            s.advance_until(t_limit)

    def start_at(self, t: float) -> None:
        for s in self.slots:
            s.start_at(t)

    def held(self) -> list[tuple[int, int, int]]:
        return [h for s in self.slots for h in s.held()]

    def release(self, rid: int) -> tuple[int, int, int] | None:
        for s in self.slots:
            state = s.release(rid)
            if state is not None:
                return state
        return None

    def adopt(self, rid: int, ctx: int, pend: int, rem: int, now: float) -> None:
        min(self.slots, key=lambda s: s.outstanding_tokens).adopt(rid, ctx, pend, rem, now)


def make_replica(index: int, cost: IterationCost, reqs: Requests, cfg: EngineConfig, max_model_len: int):
    if cost.pipeline_stages > 1:
        return PipelinedReplica(index, cost, reqs, cfg, max_model_len)
    return ReplicaEngine(index, cost, reqs, cfg, max_model_len)
