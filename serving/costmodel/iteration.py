"""What the simulator and the scheduler need from a cost model, for one replica configuration.

Notation: T prompt tokens in one prefill iteration, L_i the prompt length of sequence i, B sequences in a decode step,
C their total context tokens (prompt + generated so far), I / O mean input / output tokens of a request type.
A prefill iteration costs f(T) + q * sum_i L_i^2 (f interpolated between knots, q the causal-attention term);
a decode step costs a[B] + b * C (b: reading one token of KV cache, plus its attention FLOPs).
A mixed iteration (vLLM V1: prompt chunks beside decodes) costs the decode step plus the prompt tokens' marginal
linear-layer time f(T + B) - f(B) plus their attention q * sum_i ((c_i + k_i)^2 - c_i^2) (chunk of k_i tokens after
c_i already computed).
Pipeline parallelism (pp stages of s seconds each for one micro-batch): every time above is one micro-batch's pass
through all stages (pp * s plus the sends); the stages work on up to pp micro-batches at once (vLLM keeps pp batches
in flight), so n steps of m micro-batches take n max(m, pp) s + (min(m, pp) - 1) s (`pipelined_time`): the bubble is
what exceeds n m s, and it vanishes only when m >= pp.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ReplicaConfig:
    tp: int  # tensor-parallel degree (inside one node)
    pp: int = 1  # pipeline-parallel stages (may cross nodes)

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    def __str__(self) -> str:
        return f"tp{self.tp}pp{self.pp}"


@dataclass(frozen=True)
class IterationCost:
    config: ReplicaConfig  # the replica this describes
    prefill_knots_tokens: tuple[float, ...]  # ascending T at which f is known
    prefill_knots_s: tuple[float, ...]  # f(T), seconds; linear in between and beyond the last two knots
    prefill_s_per_sq_token: float  # q: seconds per unit of sum_i L_i^2 (0 when the table already includes it)
    decode_base_s: tuple[float, ...]  # a[B] for B = 0..max_num_seqs, seconds (a[0] unused)
    decode_s_per_ctx_token: float  # b: seconds per context token read in a decode step
    kv_capacity_tokens: int  # KV-cache tokens that fit in the replica's memory after the weights and activations
    source: str  # "measured" or "roofline"
    pipeline_stages: int = 1  # pp: micro-batches the replica can have in flight (one per stage)

    @property
    def stage_fraction(self) -> float:
        """Share of one pass each stage takes (1 / pp): the stages split the layers evenly."""
        return 1.0 / self.pipeline_stages

    @property
    def max_num_seqs(self) -> int:
        return len(self.decode_base_s) - 1

    def prefill_time(self, total_tokens: float, sum_sq_tokens: float | None = None) -> float:
        """Seconds of one prefill iteration over prompts totalling `total_tokens` (sum of squares for attention)."""
        x, y = self.prefill_knots_tokens, self.prefill_knots_s
        if total_tokens <= x[-1]:
            t = float(np.interp(total_tokens, x, y))
        else:  # Beyond the table: the last segment's per-token slope, at least the table's average one.
            slope = max((y[-1] - y[-2]) / (x[-1] - x[-2]), y[-1] / x[-1])
            t = y[-1] + (total_tokens - x[-1]) * slope
        sq = total_tokens**2 if sum_sq_tokens is None else sum_sq_tokens
        return t + self.prefill_s_per_sq_token * sq

    def decode_base(self, batch: int) -> float:
        """a[B]: seconds of one decode step for `batch` sequences before the context term; beyond the table, the last
        step's slope (the simulator may batch more than the cost model tabulated)."""
        a = self.decode_base_s
        if batch < len(a):
            return a[batch]
        return a[-1] + (batch - len(a) + 1) * (a[-1] - a[-2])

    def decode_time(self, batch: int, context_tokens: float) -> float:
        """Seconds of one decode step for `batch` sequences holding `context_tokens` tokens of KV cache."""
        return self.decode_base(batch) + self.decode_s_per_ctx_token * context_tokens

    def step_time(self, prefill_tokens: float, prefill_sq: float, decode_batch: int, decode_context: float) -> float:
        """Seconds of one mixed iteration: `prefill_tokens` prompt tokens (attention term `prefill_sq`, the sum over
        chunks of (c + k)^2 - c^2) beside `decode_batch` decodes reading `decode_context` cached tokens."""
        if decode_batch == 0:
            return self.prefill_time(prefill_tokens, prefill_sq)
        t = self.decode_time(decode_batch, decode_context)
        if prefill_tokens > 0:  # the prompt tokens ride on the decode step's weight reads: only their marginal cost
            extra = self.prefill_time(prefill_tokens + decode_batch, 0.0) - self.prefill_time(decode_batch, 0.0)
            t += max(extra, 0.0) + self.prefill_s_per_sq_token * prefill_sq
        return t


def pipelined_time(stage_s: float, micro_batches: int, steps: int, stages: int) -> float:
    """Seconds for `steps` iterations of `micro_batches` equal micro-batches through `stages` stages of `stage_s`.

    A micro-batch's next step can enter stage 1 only after its previous one left the last stage (pp stage times),
    so with m >= pp micro-batches stage 1 never idles (n m s, plus pp - 1 to drain); with m < pp each micro-batch
    waits on itself (n pp s, the later ones offset by one stage each).
    """
    if micro_batches < 1 or steps < 1:
        return 0.0
    return steps * max(micro_batches, stages) * stage_s + (min(micro_batches, stages) - 1) * stage_s


def decode_base_table(knots_b: np.ndarray, knots_s: np.ndarray, max_num_seqs: int) -> tuple[float, ...]:
    """a[B] for B = 0..max_num_seqs by linear interpolation in B, extrapolated at the last slope."""
    b = np.arange(max_num_seqs + 1, dtype=float)
    a = np.interp(b, knots_b, knots_s)
    # Beyond the last knot: its segment's slope, but at least the table's overall slope (the measured A100/H100 TP2
    # steps dip at batch 64, which extrapolated would turn negative) and never below zero.
    slope = 0.0
    if len(knots_b) > 1:
        last = (knots_s[-1] - knots_s[-2]) / (knots_b[-1] - knots_b[-2])
        overall = (knots_s[-1] - knots_s[0]) / (knots_b[-1] - knots_b[0])
        slope = max(last, overall, 0.0)
    beyond = b > knots_b[-1]
    a[beyond] = knots_s[-1] + (b[beyond] - knots_b[-1]) * slope
    return tuple(float(v) for v in a)


@dataclass(frozen=True)
class TypeCapacity:
    rate_rps: float  # n_kj: requests/s of this type the replica sustains alone under continuous batching
    latency_s: float  # l_kj: end-to-end latency of one request at a moderate batch (the dispatcher's tie-break)
    batch: int  # sequences resident at saturation (limited by KV cache and max_num_seqs)


def type_capacity(
    cost: IterationCost, mean_in: float, mean_out: float, max_batched_tokens: int, tpot_target_s: float | None = None
) -> TypeCapacity:
    """Sustainable rate and latency of one request type on one replica under continuous batching.

    1. Prefill: prompts are batched up to the token budget, so each request costs p = f(k I) / k of engine time.
    2. A batch of B sequences (B up to what the KV cache holds at an average footprint of I + O/2, and max_num_seqs)
       decodes at B / s(B) tokens/s, s(B) = a[B] + b B (I + O/2), in the time prefills leave: serving r requests/s
       needs (1 - r p) B / s(B) >= r (O - 1), i.e. r <= x / (O - 1 + p x) with x = B / s(B).
    3. Prefills stall decoding, so a sequence's time per output token is s(B) / (1 - r p); with a target tau this
       also needs r <= (1 - s(B) / tau) / p (no target: saturation throughput).
    4. n = the best r over B.
    5. Pipeline parallelism: pp micro-batches in flight, each a batch on 1/pp of the KV cache with the times above
       (one pass through all stages), so the replica sustains pp times one such micro-batch engine's rate.
    """
    pp = cost.pipeline_stages
    kv = cost.kv_capacity_tokens // pp
    footprint = mean_in + mean_out / 2
    b_kv = int(np.clip(kv // max(footprint, 1.0), 1, cost.max_num_seqs))
    k = max(1, int(max_batched_tokens // max(mean_in, 1.0)))
    p = cost.prefill_time(k * mean_in, k * mean_in**2) / k
    B = np.arange(1, b_kv + 1, dtype=float)
    s = np.asarray(cost.decode_base_s[1:b_kv + 1]) + cost.decode_s_per_ctx_token * B * footprint
    x = B / s
    o = max(mean_out - 1, 0.0)
    r = x / (o + p * x)
    if tpot_target_s is not None and o > 0:
        r = np.minimum(r, np.clip(1 - s / tpot_target_s, 0.0, None) / p)
    best = int(np.argmax(r))
    rate = float(r[best])
    if rate <= 0:  # even one sequence misses the target: report the saturation rate of B = 1, heavily loaded
        rate = float(1 / (p + o * s[0]))
    rate *= pp
    light = max(1, (best + 1) // 2)
    latency = cost.prefill_time(mean_in, mean_in**2) + o * cost.decode_time(light, light * footprint)
    return TypeCapacity(rate_rps=rate, latency_s=latency, batch=best + 1)
