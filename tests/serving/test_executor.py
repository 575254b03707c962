"""The executor over fake replicas: plan diffs, and a plan switch and a replica failure under load lose and repeat
nothing (every request answered once, each token once and in order)."""

from __future__ import annotations

import asyncio

import pytest

from serving.costmodel.iteration import ReplicaConfig
from serving.executor import Executor, diff_plans
from serving.router.dispatcher import Dispatcher, Request
from serving.scheduler.plan import DeploymentPlan
from tests.serving.router_fakes import FakeReplica, expected_tokens
from tests.serving.test_router import TYPES


def plan(configs, devices, dispatch) -> DeploymentPlan:
    k = len(configs)
    return DeploymentPlan(replicas=tuple(configs), devices=tuple(devices), dispatch=tuple(map(tuple, dispatch)),
                          type_rates=(1.0, 1.0), served_rps=2.0, peak_utilisation=0.5, utilisation=(0.5,) * k,
                          policy="test")


A = plan([ReplicaConfig(1), ReplicaConfig(1)], [(0,), (1,)], [[1, 0], [0, 1]])
B = plan([ReplicaConfig(1), ReplicaConfig(2)], [(0,), (2, 3)], [[1, 1], [0, 1]])


def test_diff_keeps_same_replica_on_same_devices():
    s = diff_plans(A, B)
    assert s.keep == ((0, 0),) and s.start == (1,) and s.stop == (1,)
    assert diff_plans(None, A).start == (0, 1)
    assert diff_plans(A, A).keep == ((0, 0), (1, 1)) and not diff_plans(A, A).stop


def fake_start(made: list):
    async def start(name, cfg):
        await asyncio.sleep(0.05)  # a (very fast) model load
        r = FakeReplica(name, step_s=0.002)
        made.append(r)
        return r
    return start


def under_load(event, n=40):
    """n requests arriving 5 ms apart while `event(executor)` runs; returns (requests, outputs, executor, made)."""
    made: list = []
    disp = Dispatcher(TYPES, max_in_flight=1000)
    ex = Executor(disp, fake_start(made))

    async def main():
        await ex.apply(A)
        reqs = [Request(disp.new_id(), tuple(range(4 + 50 * (i % 2))), 30, resume=i % 3 != 0) for i in range(n)]

        async def one(i, r):
            await asyncio.sleep(0.005 * i)
            return [t for c in [c async for c in disp.stream(r)] for t in c.token_ids]

        out = await asyncio.gather(event(ex), *[one(i, r) for i, r in enumerate(reqs)])
        await ex.settle()
        return reqs, out[1:]

    reqs, outs = asyncio.run(main())
    return reqs, outs, ex, made, disp


def assert_exact(reqs, outs, disp):
    for r, toks in zip(reqs, outs):
        assert toks == expected_tokens(len(r.prompt_token_ids), r.max_tokens)
    finished = sum(disp.served.values())
    assert finished == len(reqs) and disp.open == 0  # each answered once


def test_switch_under_load_loses_and_repeats_nothing():
    async def switch(ex):
        await asyncio.sleep(0.06)
        return await ex.apply(B)

    reqs, outs, ex, made, disp = under_load(switch)
    assert_exact(reqs, outs, disp)
    old_b = made[1]
    assert old_b.stopped and old_b.requests  # the dropped replica served, then drained and stopped
    assert [r.name for r in ex.replicas] == [made[0].name, made[2].name]
    after = [d for d in disp.history if d.replica == made[2].name]
    assert after  # the new replica took requests


def test_killed_replica_is_replaced_and_loses_nothing():
    async def kill(ex):
        await asyncio.sleep(0.08)
        ex.replicas[1].kill()

    reqs, outs, ex, made, disp = under_load(kill)
    assert_exact(reqs, outs, disp)
    assert any(d.attempt > 0 for d in disp.history)  # some requests were re-dispatched
    assert len(made) == 3 and ex.replicas[1] is made[2]  # a replacement took the dead one's place


def test_experiment_plan_from_config():
    from omegaconf import OmegaConf

    from experiments.config import ServeReplica
    from experiments.oserve_serve import plan_from_config

    reps = OmegaConf.structured({"r": [ServeReplica(tp=2, devices=[0, 1], dispatch=[2.0, 0.0]),
                                       ServeReplica(devices=[2], dispatch=[0.0, 1.0])]}).r
    p = plan_from_config(reps, 2)
    assert p.replicas == (ReplicaConfig(2), ReplicaConfig(1)) and p.devices == ((0, 1), (2,))
    assert p.dispatch == ((2.0, 0.0), (0.0, 1.0)) and p.type_rates == (2.0, 1.0)
    with pytest.raises(ValueError, match=r"serve\.replicas\.0\.dispatch: 2 rates for 3"):
        plan_from_config(reps, 3)
