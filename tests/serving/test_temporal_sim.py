"""The simulator with a time-varying deployment: rebuilt replicas wait for their weights, removed ones drain, moved
requests resume from their KV, and every request completes exactly once."""

import numpy as np
import pytest

from serving.costmodel import ReplicaConfig
from serving.costmodel.iteration import IterationCost
from serving.sim import (
    DeploymentChange,
    Dispatcher,
    EngineConfig,
    KVMove,
    SchedulingPolicy,
    simulate,
    simulate_timeline,
)
from tests.serving.conftest import synthetic_requests

# Prefill f(T) = 0.1 + 0.001 T; a decode step costs 0.02 + 0.01 B (no context term).


def _cost(kv=100_000, pp=1):
    return IterationCost(
        config=ReplicaConfig(1, pp), prefill_knots_tokens=(0.0, 10_000.0), prefill_knots_s=(0.1, 10.1),
        prefill_s_per_sq_token=0.0, decode_base_s=tuple(0.02 + 0.01 * B for B in range(257)),
        decode_s_per_ctx_token=0.0, kv_capacity_tokens=kv, source="test")


def _keep_all(n, **kw):
    return DeploymentChange(tuple(_cost() for _ in range(n)), tuple(range(n)), (0.0,) * n, **kw)


def test_no_change_is_simulate():
    """A timeline whose decisions change nothing gives simulate's results (the fixed deployment is the same loop)."""
    arr, inp, out = synthetic_requests(300, rate=3.0)
    lab = (inp > 1000).astype(np.int64)
    w = np.array([[2.0, 0.2], [1.0, 1.0]])
    for d in (Dispatcher.affinity, Dispatcher.round_robin):
        ref = simulate(arr, inp, out, lab, [_cost(30_000), _cost(60_000)], d, weights=w, max_model_len=5000)
        got = simulate_timeline(arr, inp, out, lab, [_cost(30_000), _cost(60_000)], d, weights=w, max_model_len=5000,
                                decide_at=[10.0, 20.0], decide=lambda t, inflight: None)
        np.testing.assert_array_equal(got.finish_s, ref.finish_s)
        np.testing.assert_array_equal(got.replica, ref.replica)
        assert got.summary == ref.summary and got.changes == ()


def test_rebuilt_replica_serves_nothing_before_ready():
    """Two replicas; at t=5 replica 1 is rebuilt (ready 10 s later) while replica 0 is kept: nothing runs on the new
    engine before t=15, the removed one takes no arrival after t=5, and the kept one serves throughout."""
    arr, inp, out = synthetic_requests(200, rate=4.0)
    lab = np.zeros(len(arr), np.int64)
    w = np.array([[1.0], [1.0]])
    ch = DeploymentChange((_cost(), _cost()), (0, None), (0.0, 10.0), weights=w, label="rebuild 1")
    res = simulate_timeline(arr, inp, out, lab, [_cost(), _cost()], Dispatcher.affinity, weights=w,
                            max_model_len=5000, decide_at=[5.0], decide=lambda t, inflight: ch)
    new = res.replica == 2
    assert new.any() and np.all(res.scheduled_s[new] >= 15.0)
    assert np.all(res.first_token_s[new] > 15.0)
    assert not np.any((res.replica == 1) & (arr > 5.0))
    assert np.any((res.replica == 0) & (arr > 5.0) & (arr < 15.0))  # the kept replica serves during the rebuild
    # While the new replica loads, the dynamic router sends everything to the ready one.
    assert not np.any(new & (arr < 15.0) & (res.scheduled_s < 15.0))
    assert res.changes[0].built == 1 and res.changes[0].kept == 1 and res.changes[0].engines == (0, 2)
    assert np.all(res.completions == 1)


@pytest.mark.parametrize("keep_kv", [True, False])
def test_kv_move_resumes_from_context(keep_kv):
    """One request (100-token prompt, 1000 outputs) on replica A; at t=5.01 the deployment becomes a new replica B
    (ready 3 s later) and the request's KV moves (ready 2 s later). By then A ran the prefill (0.2 s) and 161
    decode steps of 0.03 s (the last ends at 5.03): 162 tokens out, 838 owed. On B it continues at 8.01 with 838
    decode steps and no prefill; with its KV dropped it first recomputes its 100 + 162 tokens."""
    ch = DeploymentChange((_cost(),), (None,), (3.0,), moves=(KVMove(0, 0, 2.0, keep_kv=keep_kv),))
    res = simulate_timeline([0.0], [100], [1000], [0], [_cost()], Dispatcher.round_robin, max_model_len=5000,
                            decide_at=[5.01], decide=lambda t, inflight: ch)
    assert res.first_token_s[0] == pytest.approx(0.2)
    assert res.replica[0] == 1 and res.moved[0] == 1 and res.completions[0] == 1
    recompute = 0.0 if keep_kv else 0.1 + 0.001 * 262  # a 262-token prefill, whose pass yields one more token
    owed = 838 if keep_kv else 837
    assert res.finish_s[0] == pytest.approx(8.01 + recompute + owed * 0.03)


def test_inflight_seen_by_the_decision():
    seen = []
    simulate_timeline([0.0, 0.0], [100, 50], [1000, 1000], [0, 0], [_cost(), _cost()], Dispatcher.round_robin,
                      max_model_len=5000, decide_at=[1.0], decide=lambda t, inflight: seen.extend(inflight))
    assert sorted((r.id, r.replica, r.context_tokens, r.remaining_tokens) for r in seen) == [
        (0, 0, 100 + 27, 1000 - 28), (1, 1, 50 + 29, 1000 - 30)]  # prefill 0.2 / 0.15 s, then 27 / 29 steps of 0.03 s


@pytest.mark.parametrize("policy", list(SchedulingPolicy))
def test_random_switches_lose_and_duplicate_nothing(policy):
    """Random changes every few seconds (kept, rebuilt, removed replicas; a pipelined one; half the in-flight
    requests moved, KV kept or dropped): every request completes exactly once (simulate_timeline asserts it),
    finishes after it arrived, and a moved one finishes on the engine it moved to last."""
    rng = np.random.default_rng(1)
    arr, inp, out = synthetic_requests(600, rate=6.0)
    lab = (inp > 1000).astype(np.int64)
    state = {"k": 2}
    dest = {}

    def decide(t, inflight):
        k = state["k"]
        n = int(rng.integers(1, 4))
        keep = [int(x) if x >= 0 else None for x in rng.choice(np.arange(-n, k), size=n, replace=False)]
        moves = []
        for r in inflight:
            if rng.random() < 0.5:
                moves.append(KVMove(r.id, int(rng.integers(0, n)), float(rng.uniform(0, 2)), bool(rng.random() < .7)))
        state["k"] = n
        costs = tuple(_cost(pp=2) if i == 0 and keep[i] is None else _cost() for i in range(n))
        return DeploymentChange(costs, tuple(keep), tuple(0.0 if x is not None else float(rng.uniform(0, 5))
                                                          for x in keep),
                                weights=rng.random((n, 2)) + 0.1, moves=tuple(moves), label=str(len(moves)))

    eng = EngineConfig(policy=policy, max_batched_tokens=4096)
    res = simulate_timeline(arr, inp, out, lab, [_cost(), _cost()], Dispatcher.affinity, weights=np.ones((2, 2)),
                            engine=eng, max_model_len=5000, decide_at=np.arange(3.0, 90.0, 3.0), decide=decide)
    assert np.all(res.completions == 1)
    assert np.all(res.finish_s >= res.arrival_s)
    assert res.moved.sum() > 50 and len(res.changes) == 29
    assert sum(c.built for c in res.changes) > 10
    del dest
