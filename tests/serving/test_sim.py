import numpy as np
import pytest

from serving.costmodel import ReplicaConfig
from serving.costmodel.iteration import IterationCost
from serving.sim import Dispatcher, EngineConfig, SchedulingPolicy, simulate

# f(T) = 0.1 + 0.001 T for prefill; a decode step costs 0.02 + 0.01 B (b = 0 unless given).


def _cost(kv=100_000, b=0.0):
    return IterationCost(
        config=ReplicaConfig(1), prefill_knots_tokens=(0.0, 10_000.0), prefill_knots_s=(0.1, 10.1),
        prefill_s_per_sq_token=0.0, decode_base_s=tuple(0.02 + 0.01 * B for B in range(257)),
        decode_s_per_ctx_token=b, kv_capacity_tokens=kv, source="test")


def test_single_request_hand_computed():
    r = simulate([1.0], [100], [5], [0], [_cost()], Dispatcher.round_robin, max_model_len=1000)
    ttft = 0.1 + 0.001 * 100
    assert r.first_token_s[0] == pytest.approx(1.0 + ttft)
    assert r.finish_s[0] == pytest.approx(1.0 + ttft + 4 * 0.03)  # 4 decode steps of B = 1
    s = r.summary
    assert s["p50_latency_s"] == pytest.approx(ttft + 0.12)
    assert s["p50_tpot_s"] == pytest.approx(0.03)


def test_single_request_context_term():
    r = simulate([0.0], [100], [3], [0], [_cost(b=1e-4)], Dispatcher.round_robin, max_model_len=1000)
    # Decode steps read 100 then 101 tokens of context.
    assert r.finish_s[0] == pytest.approx(0.2 + 2 * 0.03 + 1e-4 * (100 + 101))


def test_two_requests_batched_prefill_then_shared_decode():
    r = simulate([0.0, 0.0], [100, 300], [3, 6], [0, 0], [_cost()], Dispatcher.round_robin, max_model_len=1000)
    t1 = 0.1 + 0.001 * 400  # one prefill of both
    assert r.first_token_s == pytest.approx([t1, t1])
    t2 = t1 + 2 * 0.04  # two steps at B = 2: the first request is done
    assert r.finish_s[0] == pytest.approx(t2)
    assert r.finish_s[1] == pytest.approx(t2 + 3 * 0.03)  # three more at B = 1


V0 = EngineConfig(policy=SchedulingPolicy.v0)


def test_arrival_mid_decode_is_prefilled_at_next_step_boundary():
    # vLLM v0 (prefill first). Request 0: prefill 0.2 s, then steps of 0.03 s. Request 1 arrives at 0.25 (inside
    # step 2: 0.23..0.26).
    r = simulate([0.0, 0.25], [100, 100], [10, 2], [0, 0], [_cost()], Dispatcher.round_robin, max_model_len=1000,
                 engine=V0)
    boundary = 0.2 + 2 * 0.03
    assert r.first_token_s[1] == pytest.approx(boundary + 0.2)
    # Then one decode step at B = 2 finishes request 1.
    assert r.finish_s[1] == pytest.approx(boundary + 0.2 + 0.04)
    # Request 0: 2 steps, stall for the prefill, 1 shared step, then 10 - 1 - 3 = 6 more at B = 1.
    assert r.finish_s[0] == pytest.approx(boundary + 0.2 + 0.04 + 6 * 0.03)


def test_v1_arrival_mid_decode_rides_on_the_decode_step():
    # vLLM V1: the same two requests; at the boundary 0.26 request 1's prompt joins request 0's decode in one pass
    # costing a[1] + f(100 + 1) - f(1) = 0.03 + 0.1.
    r = simulate([0.0, 0.25], [100, 100], [10, 2], [0, 0], [_cost()], Dispatcher.round_robin, max_model_len=1000)
    boundary = 0.2 + 2 * 0.03
    assert r.first_token_s[1] == pytest.approx(boundary + 0.13)
    assert r.finish_s[1] == pytest.approx(boundary + 0.13 + 0.04)
    # Request 0: tokens 1 (prefill), 2-3, 4 (mixed), 5 (shared step), then 5 more at B = 1.
    assert r.finish_s[0] == pytest.approx(boundary + 0.13 + 0.04 + 5 * 0.03)


def test_v1_chunked_prefill_three_requests_hand_computed():
    """Budget 300 tokens. A (500 in, 3 out) and B (100 in, 2 out) at 0, C (50 in, 2 out) at 0.35.
    step 1 [0, 0.4]: A's first chunk of 300 (f(300) = 0.4); B waits (no budget left); C arrives.
    step 2 [0.4, 0.8]: A's last 200 + B's 100 (f(300)): both sample their first token at 0.8.
    step 3 [0.8, 0.89]: A and B decode (a[2] = 0.04) + C's 50 prompt tokens (f(52) - f(2) = 0.05): B done, C's first.
    step 4 [0.89, 0.93]: A and C decode: both done."""
    r = simulate([0.0, 0.0, 0.35], [500, 100, 50], [3, 2, 2], [0, 0, 0], [_cost()], Dispatcher.round_robin,
                 engine=EngineConfig(max_batched_tokens=300), max_model_len=1000)
    np.testing.assert_allclose(r.first_token_s, [0.8, 0.8, 0.89])
    np.testing.assert_allclose(r.finish_s, [0.93, 0.89, 0.93])
    np.testing.assert_allclose(r.scheduled_s, [0.0, 0.4, 0.8])  # queueing ends when the first chunk runs


def _check_invariants(r, n):
    assert np.all(r.completions == 1) and len(r.completions) == n
    assert np.all(r.arrival_s <= r.first_token_s + 1e-12)
    assert np.all(r.first_token_s <= r.finish_s + 1e-12)
    assert all(p <= k for p, k in zip(r.peak_kv_blocks, r.kv_blocks))


@pytest.mark.parametrize("policy", list(SchedulingPolicy))
@pytest.mark.parametrize("dispatch", list(Dispatcher))
def test_invariants_under_kv_pressure_synthetic(dispatch, policy):
    from tests.serving.conftest import synthetic_requests

    arr, inp, out = synthetic_requests(300, rate=20.0)
    costs = [_cost(kv=9000), _cost(kv=12000)]
    w = np.array([[1.0, 0.2], [1.0, 3.0]])
    labels = (inp > 1000).astype(int)
    r = simulate(arr, inp, out, labels, costs, dispatch, weights=w,
                 engine=EngineConfig(max_batched_tokens=4096, policy=policy), max_model_len=4500)
    _check_invariants(r, len(arr))
    assert r.preemptions.sum() > 0  # the small caches did force preemption
    if dispatch is Dispatcher.plan:  # type 1 goes mostly to replica 1 (3 : 0.2)
        assert np.mean(r.replica[labels == 1] == 1) > 0.85


def test_invariants_on_real_trace_slice(real_data):
    from common.topology import h100_80g_4x8
    from common.traces import load_request_trace
    from serving.costmodel import CostModel, CostModelKind, get_model, load_perf_table

    tr = load_request_trace(real_data / "azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv", "azure")
    tr = tr.slice(600, 900).scale_rate(4.0)
    cm = CostModel(get_model("llama2-70b"), h100_80g_4x8(), kind=CostModelKind.measured,
                   table=load_perf_table(real_data / "splitwise_sim_perf_model/perf_model.csv"))
    costs = [cm.cost(ReplicaConfig(2)), cm.cost(ReplicaConfig(4))]
    r = simulate(tr.arrival_s, tr.input_tokens, tr.output_tokens, np.zeros(len(tr), int), costs,
                 Dispatcher.least_outstanding)
    _check_invariants(r, len(tr))


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="unknown dispatcher"):
        simulate([0.0], [1], [1], [0], [_cost()], "random")
    with pytest.raises(ValueError, match="no replicas"):
        simulate([0.0], [1], [1], [0], [], Dispatcher.round_robin)
    with pytest.raises(ValueError, match="cannot hold"):
        simulate([0.0], [1], [1], [0], [_cost(kv=100)], Dispatcher.round_robin, max_model_len=1000)


def _speed(x, kv=60_000):
    """A replica x times slower than the base one (steps 20 ms + 0.5 ms per sequence, prompts 0.2 ms per token)."""
    return IterationCost(
        config=ReplicaConfig(1), prefill_knots_tokens=(0.0, 10_000.0), prefill_knots_s=(0.02 * x, 2.02 * x),
        prefill_s_per_sq_token=0.0, decode_base_s=tuple(x * (0.02 + 0.0005 * B) for B in range(257)),
        decode_s_per_ctx_token=1e-7, kv_capacity_tokens=kv, source="test")


def test_affinity_keeps_types_on_their_replicas_and_joins_the_shortest_queue():
    """Type 0 may use replica 0 only; type 1 both. With a fast and a 3x slower replica and a 50/50 plan, the fixed
    split queues half the work on the slow one; picking the fewest outstanding tokens at each arrival does not."""
    from tests.serving.conftest import synthetic_requests

    arr, inp, out = synthetic_requests(600, rate=3.0, seed=4)
    labels = (inp > 1000).astype(int)
    costs = [_speed(1), _speed(3)]
    w = np.array([[1.0, 0.5], [0.0, 0.5]])
    aff = simulate(arr, inp, out, labels, costs, Dispatcher.affinity, weights=w, max_model_len=4500)
    assert np.all(aff.replica[labels == 0] == 0)
    assert set(aff.replica[labels == 1]) == {0, 1}
    half = np.array([[0.5, 0.5], [0.5, 0.5]])
    split = simulate(arr, inp, out, labels, costs, Dispatcher.plan, weights=half, max_model_len=4500)
    jsq = simulate(arr, inp, out, labels, costs, Dispatcher.affinity, weights=half, max_model_len=4500)
    assert jsq.summary["p99_latency_s"] < 0.6 * split.summary["p99_latency_s"]
    with pytest.raises(ValueError, match="affinity needs"):
        simulate([0.0], [1], [1], [0], [_cost()], Dispatcher.affinity)
