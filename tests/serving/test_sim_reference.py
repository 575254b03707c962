"""The simulator's replica (several decode steps in closed form, cut at arrivals) against plain one-iteration-at-a-time
references of the same vLLM-like policies (v0 prefill-first, V1 chunked prefill), written as directly as possible."""

from collections import deque

import numpy as np
import pytest

from serving.costmodel import ReplicaConfig
from serving.costmodel.iteration import IterationCost
from serving.sim import Dispatcher, EngineConfig, SchedulingPolicy, simulate
from tests.serving.conftest import synthetic_requests


def reference(arrival, inp, out, cost: IterationCost, eng: EngineConfig, max_model_len: int):
    n = len(arrival)
    bs = eng.block_size
    num_blocks = cost.kv_capacity_tokens // bs
    wm = int(eng.watermark * num_blocks)
    budget = max(eng.max_batched_tokens, max_model_len)
    blocks = lambda ctx: sum(-(-c // bs) for c in ctx)  # noqa: E731
    first, finish = np.full(n, np.nan), np.full(n, np.nan)
    gen = np.zeros(n, int)
    t, i = 0.0, 0
    waiting: deque = deque()
    running: list = []  # [rid, ctx, rem]
    just_preempted = False
    while i < n or waiting or running:
        while i < n and arrival[i] <= t:
            waiting.append(i)
            i += 1
        if not waiting and not running:
            t = arrival[i]
            continue
        if waiting and not just_preempted:  # prefill first
            free = num_blocks - blocks([r[1] for r in running])
            batch, tokens = [], 0
            while waiting and len(running) + len(batch) < eng.max_num_seqs:
                rid = waiting[0]
                length = int(inp[rid] + gen[rid])
                need = -(-length // bs)
                floor = 0 if (not running and not batch) else wm
                if tokens + length > budget or free - need < floor:
                    break
                waiting.popleft()
                batch.append((rid, length))
                tokens += length
                free -= need
            if batch:
                t += cost.prefill_time(tokens, sum(float(length) ** 2 for _, length in batch))
                for rid, length in batch:
                    if np.isnan(first[rid]):
                        first[rid] = t
                    gen[rid] += 1
                    if gen[rid] >= out[rid]:
                        finish[rid] = t
                    else:
                        running.append([rid, length, out[rid] - gen[rid]])
                continue
        # one decode step, preempting the newest sequence while the cache cannot grow
        while blocks([r[1] + 1 for r in running]) > num_blocks:
            rid = running.pop()[0]
            waiting.appendleft(rid)
            just_preempted = True
        t += cost.decode_time(len(running), sum(r[1] for r in running))
        just_preempted = False
        for r in running:
            r[1] += 1
            r[2] -= 1
            gen[r[0]] += 1
            if r[2] == 0:
                finish[r[0]] = t
        running = [r for r in running if r[2] > 0]
    return first, finish


def reference_v1(arrival, inp, out, cost: IterationCost, eng: EngineConfig):
    """vLLM V1 step by step: running first (min(pend, budget) tokens each, preempting the newest until the blocks
    fit), then the queue unless something was preempted, then one mixed pass."""
    n = len(arrival)
    bs, num_blocks = eng.block_size, cost.kv_capacity_tokens // eng.block_size
    blocks = lambda c: -(-c // bs)  # noqa: E731
    first, finish = np.full(n, np.nan), np.full(n, np.nan)
    gen = np.zeros(n, int)
    t, i = 0.0, 0
    waiting: deque = deque()
    running: list = []  # [rid, ctx, pend]
    while i < n or waiting or running:
        while i < n and arrival[i] <= t:
            waiting.append(i)
            i += 1
        if not waiting and not running:
            t = arrival[i]
            continue
        budget, sched, preempted = eng.max_batched_tokens, [], False
        j = 0
        while j < len(running) and budget > 0:
            k = min(running[j][2], budget)
            others = sum(blocks(r[1] + kk) for r, kk in zip(running, [s[1] for s in sched] + [k]))
            others += sum(blocks(r[1]) for r in running[j + 1:])
            if others > num_blocks:
                rid = running.pop()[0]
                waiting.appendleft(rid)
                preempted = True
                continue  # retry j (or stop, if j itself was preempted)
            sched.append((j, k))
            budget -= k
            j += 1
        if not preempted:
            used = sum(blocks(r[1] + k) for r, (_, k) in zip(running, sched)) + sum(
                blocks(r[1]) for r in running[len(sched):])
            while waiting and budget > 0 and len(running) < eng.max_num_seqs:
                rid = waiting[0]
                k = min(inp[rid] + gen[rid], budget)
                if used + blocks(k) > num_blocks:
                    break
                waiting.popleft()
                running.append([rid, 0, inp[rid] + gen[rid]])
                sched.append((len(running) - 1, k))
                used += blocks(k)
                budget -= k
        tp, sq, bd, cd = 0.0, 0.0, 0, 0.0
        for j, k in sched:
            r = running[j]
            if k == 1 and r[2] == 1:
                bd, cd = bd + 1, cd + r[1]
            else:
                tp, sq = tp + k, sq + (r[1] + k) ** 2 - r[1] ** 2
        t += cost.step_time(tp, sq, bd, cd)
        for j, k in sched:
            r = running[j]
            r[1] += k
            r[2] -= k
            if r[2] == 0:
                if np.isnan(first[r[0]]):
                    first[r[0]] = t
                gen[r[0]] += 1
                r[2] = 1
                if gen[r[0]] >= out[r[0]]:
                    finish[r[0]] = t
        running = [r for r in running if not gen[r[0]] >= out[r[0]]]
    return first, finish


def _cost(kv, b):
    return IterationCost(
        config=ReplicaConfig(1), prefill_knots_tokens=(1.0, 1000.0, 8000.0), prefill_knots_s=(0.02, 0.12, 1.1),
        prefill_s_per_sq_token=1e-9, decode_base_s=tuple(0.015 + 0.0007 * B for B in range(257)),
        decode_s_per_ctx_token=b, kv_capacity_tokens=kv, source="test")


@pytest.mark.parametrize("kv, b, rate, seed", [(200_000, 0.0, 2.0, 0), (200_000, 2e-7, 6.0, 1), (12_000, 1e-7, 6.0, 2),
                                               (7_000, 0.0, 10.0, 3)])
def test_replica_matches_per_iteration_reference(kv, b, rate, seed):
    arr, inp, out = synthetic_requests(250, rate=rate, seed=seed)
    eng = EngineConfig(max_batched_tokens=4096, max_num_seqs=64, policy=SchedulingPolicy.v0)
    cost = _cost(kv, b)
    res = simulate(arr, inp, out, np.zeros(len(arr), int), [cost], Dispatcher.round_robin, engine=eng,
                   max_model_len=4500)
    first, finish = reference(arr, inp, out, cost, eng, 4500)
    np.testing.assert_allclose(res.first_token_s, first, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(res.finish_s, finish, rtol=1e-9, atol=1e-9)
    if kv < 10_000:
        assert res.preemptions.sum() > 0


@pytest.mark.parametrize("kv, b, rate, seed, budget", [(200_000, 0.0, 2.0, 0, 2048), (200_000, 2e-7, 6.0, 1, 4096),
                                                       (12_000, 1e-7, 6.0, 2, 1024), (7_000, 0.0, 10.0, 3, 512)])
def test_v1_replica_matches_per_iteration_reference(kv, b, rate, seed, budget):
    arr, inp, out = synthetic_requests(250, rate=rate, seed=seed)
    out = np.maximum(out, 1)
    eng = EngineConfig(max_batched_tokens=budget, max_num_seqs=64)
    cost = _cost(kv, b)
    res = simulate(arr, inp, out, np.zeros(len(arr), int), [cost], Dispatcher.round_robin, engine=eng,
                   max_model_len=4500)
    first, finish = reference_v1(arr, inp, out, cost, eng)
    np.testing.assert_allclose(res.first_token_s, first, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(res.finish_s, finish, rtol=1e-9, atol=1e-9)
    if kv < 10_000:
        assert res.preemptions.sum() > 0
