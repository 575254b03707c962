"""The router over in-process fake replicas: the OpenAI API through the `openai` client, type affinity, JSQ,
re-dispatch on failure, and the 400 / 429 answers. (Real engines: tests/serving/test_engines.py, slow.)"""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import numpy as np
import pytest

from common.stats import RequestTypes
from serving.costmodel.iteration import ReplicaConfig
from serving.router.dispatcher import Dispatcher, Request
from serving.router.policy import RoutingTable, choose, table_from_plan
from serving.scheduler.plan import DeploymentPlan
from tests.serving.router_fakes import FakeReplica, expected_tokens

# Type 0: short prompts, short outputs; type 1: long prompts, long outputs (centers in log1p tokens).
TYPES = RequestTypes(np.log1p([[8.0, 8.0], [200.0, 64.0]]))
MAX_IN_FLIGHT = 6


def plan(dispatch) -> DeploymentPlan:
    k = len(dispatch)
    return DeploymentPlan(replicas=(ReplicaConfig(1),) * k, devices=tuple((i,) for i in range(k)),
                          dispatch=tuple(tuple(r) for r in dispatch), type_rates=(1.0, 1.0), served_rps=2.0,
                          peak_utilisation=0.5, utilisation=(0.5,) * k, policy="test")


# ---- policy (pure) ------------------------------------------------------------------------------------------------
def test_table_from_plan_shares_and_unserved_type():
    t = table_from_plan(plan([[3.0, 0.0], [1.0, 0.0]]), ["a", "b"])
    assert t.share[0] == (0.75, 0.25)
    assert t.share[1] == (0.5, 0.5)  # a type the plan sends nowhere may go anywhere
    assert t.targets(0) == (0, 1)


def test_choose_is_shortest_queue_among_the_types_replicas():
    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(1, 6))
        share = rng.random((2, k)) * (rng.random((2, k)) < 0.6)
        t = RoutingTable(tuple("abcdef"[:k]), tuple(tuple(r / r.sum() if r.sum() else np.full(k, 1 / k)) for r in share))
        queue = rng.integers(0, 4, k).tolist()
        alive = (rng.random(k) < 0.8).tolist()
        for j in range(2):
            got = choose(t, j, queue, alive)
            cand = [i for i in range(k) if t.share[j][i] > 0 and alive[i]] or [i for i in range(k) if alive[i]]
            if not cand:
                assert got is None
                continue
            best = min(queue[i] for i in cand)  # reference: brute force over the candidates
            assert got in cand and queue[got] == best
            assert t.share[j][got] == max(t.share[j][i] for i in cand if queue[i] == best)


# ---- dispatcher (no HTTP) -----------------------------------------------------------------------------------------
def run_requests(disp, reqs):
    async def one(r):
        return [t for c in [c async for c in disp.stream(r)] for t in c.token_ids]

    async def all_():
        return await asyncio.gather(*[one(r) for r in reqs])

    return asyncio.run(all_())


@pytest.mark.parametrize("resume", [True, False])
def test_killed_replica_loses_and_repeats_nothing(resume):
    a, b, c = FakeReplica("a", 0.003), FakeReplica("b", 0.003), FakeReplica("c", 0.003)
    disp = Dispatcher(TYPES, max_in_flight=100)
    disp.install(table_from_plan(plan([[1, 1], [1, 1], [1, 1]]), ["a", "b", "c"]), [a, b, c])
    reqs = [Request(disp.new_id(), tuple(range(5 + i)), 40, resume=resume) for i in range(12)]

    async def kill_later():
        await asyncio.sleep(0.04)  # mid-stream: every request has some tokens out
        b.kill()

    async def main():
        async def one(r):
            return [t for ch in [ch async for ch in disp.stream(r)] for t in ch.token_ids]
        out = await asyncio.gather(kill_later(), *[one(r) for r in reqs])
        return out[1:]

    outs = asyncio.run(main())
    for r, toks in zip(reqs, outs):
        assert toks == expected_tokens(len(r.prompt_token_ids), r.max_tokens)  # each token once, in order
    moved = {d.request_id for d in disp.history if d.attempt > 0}
    assert moved and all(d.replica != "b" for d in disp.history if d.attempt > 0)
    assert disp.open == 0 and sum(disp.queue.values()) == 0


# ---- HTTP, through the openai client ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def router():
    """Router on 127.0.0.1 over two fakes: the plan sends type 0 to `short`, type 1 to `long`."""
    from transformers import AutoTokenizer

    from serving.router.app import build_app
    from serving.router.metrics import RouterMetrics
    from serving.router.server import RouterServer
    from serving.tinymodel import TinyModelSpec, build_tiny_model, default_cache_root

    tok = AutoTokenizer.from_pretrained(build_tiny_model(TinyModelSpec(), default_cache_root()))
    reps = [FakeReplica("short"), FakeReplica("long")]
    disp = Dispatcher(TYPES, max_in_flight=MAX_IN_FLIGHT)
    disp.install(table_from_plan(plan([[1.0, 0.0], [0.0, 1.0]]), ["short", "long"]), reps)
    srv = RouterServer(build_app(disp, tok, "tiny", max_model_len=512, metrics=RouterMetrics())).start_in_thread()
    yield srv, disp, reps
    srv.stop()


def client(srv):
    import openai

    return openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=30)


def test_openai_completion_and_streamed_chat(router):
    srv, disp, _ = router
    cl = client(srv)
    assert [m.id for m in cl.models.list().data] == ["tiny"]
    r = cl.completions.create(model="tiny", prompt=list(range(10)), max_tokens=8)
    assert r.choices[0].text == "".join(f" t{t}" for t in expected_tokens(10, 8))
    assert r.usage.completion_tokens == 8 and r.usage.prompt_tokens == 10
    parts = []
    for ev in cl.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "kalo mi ne"}],
                                         max_tokens=6, stream=True, stream_options={"include_usage": True}):
        if ev.choices and ev.choices[0].delta.content:
            parts.append(ev.choices[0].delta.content)
        if ev.usage:
            n_prompt = ev.usage.prompt_tokens
    assert "".join(parts) == "".join(f" t{t}" for t in expected_tokens(n_prompt, 6))
    assert httpx.get(srv.url + "/health").json()["status"] == "ok"
    m = httpx.get(srv.url + "/metrics").text
    assert "loadwise_router_served" in m and "loadwise_replica_running" in m


def test_two_types_land_on_the_plans_replicas(router):
    srv, disp, _ = router
    cl = client(srv)
    before = len(disp.history)
    for _ in range(3):
        cl.completions.create(model="tiny", prompt=list(range(6)), max_tokens=6)  # type 0
        cl.completions.create(model="tiny", prompt=list(range(220)), max_tokens=60)  # type 1
    new = list(disp.history)[before:]
    assert [(d.request_type, d.replica) for d in new] == [(0, "short"), (1, "long")] * 3


def test_bad_requests_are_400_naming_the_field(router):
    srv, _, _ = router
    r = httpx.post(srv.url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"
    r = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": "many"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": list(range(600)), "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt" and "512" in r.json()["error"]["message"]
    r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "tiny", "messages": [
        {"role": "user", "content": "kalo " * 600}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_full_queue_is_429(router):
    srv, disp, reps = router
    for r in reps:
        r.step_s = 0.02  # 100 tokens: 2 s per request, so the first MAX_IN_FLIGHT stay open
    opened = threading.Barrier(MAX_IN_FLIGHT + 1)
    results = []

    def hold():
        with httpx.stream("POST", srv.url + "/v1/completions", timeout=30,
                          json={"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 100, "stream": True}) as r:
            lines = r.iter_lines()
            next(lines)  # first event: the request is admitted
            opened.wait()
            results.append(sum(1 for ln in lines if ln.startswith("data: {")))

    ts = [threading.Thread(target=hold) for _ in range(MAX_IN_FLIGHT)]
    try:
        for t in ts:
            t.start()
        opened.wait(timeout=30)
        r = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": [1, 2], "max_tokens": 2})
        assert r.status_code == 429 and "queue full" in r.json()["error"]["message"]
        for t in ts:
            t.join(30)
        assert results == [99] * MAX_IN_FLIGHT  # the admitted ones were all served in full
        r = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": [1, 2], "max_tokens": 2})
        assert r.status_code == 200 and json.loads(r.text)["usage"]["completion_tokens"] == 2
    finally:
        for r in reps:
            r.step_s = 0.002


def test_loadgen_records_every_request(router):
    from common.traces import RequestTrace
    from serving.loadgen import LoadSpec, fit_trace, replay, summary

    srv, _, _ = router
    rng = np.random.default_rng(0)
    trace = RequestTrace(np.cumsum(rng.exponential(0.01, 20)), rng.integers(50, 3000, 20), rng.integers(5, 500, 20))
    # arrivals ~50 ms apart, requests ~40 ms long: within the fixture's queue bound
    spec = LoadSpec(num_requests=12, time_scale=5.0, length_scale=0.05, max_input=100, max_output=20)
    fit = fit_trace(trace, spec)
    assert fit.input_tokens.max() <= 100 and fit.output_tokens.max() <= 20 and fit.arrival_s[0] == 0
    recs = asyncio.run(replay(srv.url + "/v1", "tiny", fit, spec))
    assert [r.error for r in recs] == [""] * 12
    assert [r.output_tokens for r in recs] == fit.output_tokens.tolist()
    assert all(0 < r.ttft_s <= r.e2e_s for r in recs)
    s = summary(recs)
    assert s["answered"] == 12 and s["p50_e2e_s"] <= s["p99_e2e_s"]


def test_loadgen_process_replays_like_the_in_process_client(router, tmp_path):
    """The benchmark's client (serving.loadgen in a process of its own) answers every request, each its length."""
    from common.traces import RequestTrace
    from serving.loadgen import LoadSpec, replay_from_process

    srv, _, _ = router
    trace = RequestTrace(np.arange(6) * 0.05, np.array([10, 300, 20, 250, 15, 5]), np.array([3, 8, 4, 6, 2, 1]))
    recs = asyncio.run(replay_from_process(srv.url + "/v1", "tiny", trace, LoadSpec(num_requests=6, prompt_base=7),
                                            tmp_path, "t"))
    assert [r.error for r in recs] == [""] * 6
    assert [r.output_tokens for r in recs] == trace.output_tokens.tolist()


def test_paired_rounds_are_medians_of_within_round_ratios():
    from experiments.bench_engines import METRICS, paired

    def side(x):
        return dict.fromkeys(METRICS, x)

    rounds = [{"direct": side(1.0), "routed": side(1.1)}, {"direct": side(2.0), "routed": side(2.0)},
              {"direct": side(1.0), "routed": side(1.3)}]
    p = paired(rounds)
    assert p["added_p50_e2e_s"]["median"] == pytest.approx(0.1)
    assert p["added_p50_e2e_s"]["max"] == pytest.approx(0.3) and p["added_p50_e2e_s"]["min"] == pytest.approx(0.0)
    assert p["throughput_ratio"]["median"] == pytest.approx(1.1)
    assert p["direct_p99_e2e_s"] == {"median": 1.0, "min": 1.0, "max": 2.0}


def test_loadgen_prompts_differ_from_their_first_block():
    from serving.loadgen import prompt_ids

    heads = {tuple(prompt_ids(i, 16)) for i in range(5000)}
    assert len(heads) == 5000
    assert [len(prompt_ids(i, n)) for i, n in ((0, 1), (3, 2), (9, 40))] == [1, 2, 40]
