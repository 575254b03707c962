"""training.sim on hand-computed two-device cases, and its agreement with the planner's own evaluation."""

import numpy as np
import pytest

from common.costmodel import ComputeModel
from common.topology import ClusterSpec, DeviceSpec
from training.model import ModelConfig
from training.planner import make_planner
from training.planner.evaluate import evaluate
from training.planner.objective import PlanObjective
from training.sim import NonExpert, Prefetch, simulate_iteration

# H=4, F=8, 2 query and 2 KV heads of dimension 2 (q = kv = 4), S=4, E=2, top-1, V=16, 2 layers.
MODEL = ModelConfig(vocab_size=16, hidden=4, ffn=8, num_layers=2, num_heads=2, num_kv_heads=2, num_experts=2,
                    top_k=1, max_seq_len=4)
# Forward FLOPs per token of attention: Q,K,V,O projections 2*4*(4+4+4+4) + causal scores 2*S*q = 2*4*4 + router
# 2*H*E = 2*4*2.
ATTN_FLOPS = 2 * 4 * 16 + 2 * 4 * 4 + 2 * 4 * 2
# Dense parameters of a layer: Q,K,V,O 4 * (4*4), router 2*4, two norms 2*4.
DENSE_PARAMS = 4 * 16 + 8 + 8


def two_devices(peak: float, bw: float) -> tuple[ClusterSpec, ComputeModel]:
    cluster = ClusterSpec("two", 1, 2, DeviceSpec("d", peak, 1e12, 1e12), intra_bw=bw, inter_bw=bw,
                          intra_latency=0.0, inter_latency=0.0)
    return cluster, ComputeModel(peak, default_efficiency=1.0)


def expert_s(tokens: int, peak: float) -> float:
    return 2 * tokens * 3 * 4 * 8 / peak  # SwiGLU forward: 2 * tokens * 3 * H * F


# loads[l, i, j]: tokens source device i routes to expert j.
SKEW = np.array([[[5, 3], [1, 7]], [[6, 2], [4, 4]]])


def test_compute_bound_equals_flops_over_peak():
    peak = 1e9
    cluster, compute = two_devices(peak, bw=1e30)
    r = simulate_iteration(MODEL, cluster, "megatron_ep", SKEW, 1, compute=compute)
    # Static EP: device d computes expert d. Layer 0: devices compute 5+1 and 3+7; layer 1: 6+4 and 2+4.
    attention = 3 * 8 * ATTN_FLOPS / peak  # every device sends 8 tokens; forward + backward twice as long
    expected = [3 * (attention / 3 + expert_s(10, peak)), 3 * (attention / 3 + expert_s(10, peak))]
    head = 3 * 2 * 8 * 4 * 16 / peak
    assert [b.total for b in r.layers] == pytest.approx(expected, rel=1e-9)
    assert r.iteration_s == pytest.approx(sum(expected) + head, rel=1e-9)
    assert r.max_tokens.tolist() == [10, 10]
    rec = simulate_iteration(MODEL, cluster, "megatron_ep", SKEW, 1, compute=compute, recompute=True)
    assert rec.layer_sum.attention == pytest.approx(4 / 3 * r.layer_sum.attention, rel=1e-12)  # forward twice
    assert rec.layer_sum.expert == pytest.approx(4 / 3 * r.layer_sum.expert, rel=1e-12)


def test_comm_bound_equals_bytes_over_bandwidth():
    bw = 1e9
    cluster, compute = two_devices(peak=1e30, bw=bw)
    r = simulate_iteration(MODEL, cluster, "megatron_ep", SKEW, 1, compute=compute)
    # Layer 0: device 0 sends 3 tokens to device 1, device 1 sends 1 to device 0; a device sends and receives at
    # once, so a dispatch takes max(3, 1) tokens * H * 2 bytes / bw; combine likewise; both again in backward.
    # Layer 1: max(2, 4). Dense gradients: a ring all-reduce of 80 bf16 parameters over 2 devices moves 2 * 80 bytes
    # per device, all exposed (no compute to hide under); experts have one replica each (nothing to reduce).
    a2a = [4 * 3 * 8 / bw, 4 * 4 * 8 / bw]
    grads = 2 * (DENSE_PARAMS * 2 / 2) / bw
    assert [b.alltoall for b in r.layers] == pytest.approx(a2a, rel=1e-9)
    assert r.layer_sum.exposed == pytest.approx(2 * grads, rel=1e-9)
    assert r.iteration_s == pytest.approx(sum(a2a) + 2 * grads, rel=1e-6)


def test_laer_restore_hidden_under_previous_layers_compute():
    peak, bw = 1e9, 1e8
    cluster, compute = two_devices(peak, bw)
    loads = np.array([[[6, 2], [2, 6]]] * 2)
    r = simulate_iteration(MODEL, cluster, "laer", loads, 1, compute=compute)
    a = 8 * ATTN_FLOPS / peak  # attention forward, every device sends 8 tokens
    x = expert_s(8, peak)  # every device computes 8 tokens whichever expert it holds
    # Restore: one expert of P = 3*4*8 = 96 elements, shard ceil(96/2) = 48 bf16 from the peer; dense FSDP all-gather
    # of ceil(80/2) = 40 bf16. The gradient all-to-all and reduce-scatter move the same bytes back.
    p = (48 * 2 + 40 * 2) / bw
    w = 2 * (a + x)  # backward compute of one layer
    fwd = [max(0.0, p - a), max(0.0, p - x - a)]  # layer 0 fetches at its top, layer 1 under layer 0's experts
    bwd = [max(0.0, p - w) + p, max(0.0, p - w) + p]  # layer 0: layer 1's gradient + its own at the end;
    # layer 1: layer 0's weights during its backward + its own weights before it (nothing to hide under)
    assert p > a and p < x + a and p < w  # the fixture exercises partial, full and no hiding
    exposed = [f + b for f, b in zip(fwd, bwd)]
    assert [b.exposed for b in r.layers] == pytest.approx(exposed, rel=1e-9)
    assert [b.param_comm for b in r.layers] == pytest.approx([3 * p, 3 * p], rel=1e-9)
    off = simulate_iteration(MODEL, cluster, "laer", loads, 1, compute=compute, comm_opt=False)
    assert [b.exposed for b in off.layers] == pytest.approx([3 * p, 3 * p], rel=1e-9)
    assert off.iteration_s - r.iteration_s == pytest.approx(6 * p - sum(exposed), rel=1e-9)
    assert off.iteration_s > r.iteration_s


@pytest.mark.parametrize("recompute", [False, True])
def test_laer_prefetch_one_unit_hides_under_own_attention_only(recompute):
    """Prefetch.unit (FSDP prefetch limit 1, the paper's no_comm_opt): a layer's weights are fetched when its own
    dense unit starts, so only its attention hides them (its recomputed attention in backward); the deferred
    gradient all-to-all still runs beside the next layer's backward."""
    peak, bw = 1e9, 1e8
    cluster, compute = two_devices(peak, bw)
    loads = np.array([[[6, 2], [2, 6]]] * 2)
    kw = {"compute": compute, "recompute": recompute}
    unit = simulate_iteration(MODEL, cluster, "laer", loads, 1, prefetch=Prefetch.unit, **kw)
    layer = simulate_iteration(MODEL, cluster, "laer", loads, 1, **kw)
    serial = simulate_iteration(MODEL, cluster, "laer", loads, 1, comm_opt=False, prefetch=Prefetch.unit, **kw)
    a, x = 8 * ATTN_FLOPS / peak, expert_s(8, peak)
    p = (48 * 2 + 40 * 2) / bw  # restore + dense all-gather, = gradient all-to-all + reduce-scatter (test above)
    r = 1.0 if recompute else 0.0
    w = (2 + r) * (a + x)
    hidden = min(p, r * a)  # of each backward fetch, under the recomputed attention
    assert p > a and p < x + a and hidden + p < w  # forward fetches partly hidden, gradients wholly
    fwd = [p - a, p - a]
    bwd = [(p - hidden) + max(0.0, hidden + p - w) + p, (p - hidden) + max(0.0, hidden - w)]  # + Gr_0 at the end
    assert [b.exposed for b in unit.layers] == pytest.approx([f + b for f, b in zip(fwd, bwd)], rel=1e-9)
    assert unit.layer_sum.exposed < serial.layer_sum.exposed
    if not recompute:  # with recompute the layer order's last fetch is exposed whole: an edge effect of 2 layers
        assert layer.layer_sum.exposed < unit.layer_sum.exposed
    assert serial.layer_sum.exposed == pytest.approx(serial.layer_sum.param_comm, rel=1e-12)  # comm_opt off wins


def test_fsep_balanced_equals_ep_expert_time():
    cluster, compute = two_devices(1e9, 1e9)
    balanced = np.full((2, 2, 2), 4)
    ep = simulate_iteration(MODEL, cluster, "megatron_ep", balanced, 1, compute=compute)
    fsep = simulate_iteration(MODEL, cluster, "laer", balanced, 2, compute=compute)
    assert fsep.layer_sum.expert == pytest.approx(ep.layer_sum.expert, rel=1e-12)
    assert fsep.max_tokens.tolist() == ep.max_tokens.tolist() == [8, 8]


def test_laer_max_tokens_below_ep_and_equal_to_planner_evaluate():
    model = ModelConfig(vocab_size=16, hidden=8, ffn=16, num_layers=1, num_heads=2, num_kv_heads=2, num_experts=4,
                        top_k=2, max_seq_len=8)
    cluster = ClusterSpec("2x2", 2, 2, DeviceSpec("d", 1e12, 1e12, 1e12), intra_bw=1e11, inter_bw=2e10)
    compute = ComputeModel(1e12, default_efficiency=0.5)
    rng = np.random.default_rng(0)
    routes = 200
    loads = rng.multinomial(routes, [0.7, 0.1, 0.1, 0.1], size=(1, 4))  # [L=1, N=4, E=4], expert 0 hot
    ep = simulate_iteration(model, cluster, "megatron_ep", loads, 1, compute=compute)
    laer = simulate_iteration(model, cluster, "laer", loads, 2, compute=compute)
    objective = PlanObjective.for_model(cluster, model.hidden, model.ffn, False, compute)
    plan = make_planner("laer", 4, 2, 2, objective).plan(loads[0])
    tokens, _ = evaluate(plan, loads[0], 2, objective)
    assert laer.max_tokens[0] == tokens.max()
    assert laer.max_tokens[0] < ep.max_tokens[0]
    assert laer.layer_sum.expert < ep.layer_sum.expert


@pytest.mark.parametrize("system", ["fsdp_ep", "flexmoe", "laer", "laer_plus"])
def test_comm_opt_off_never_faster(system):
    cluster = ClusterSpec("2x2", 2, 2, DeviceSpec("d", 1e12, 1e12, 1e12), intra_bw=1e9, inter_bw=2e8)
    model = ModelConfig(vocab_size=16, hidden=8, ffn=16, num_layers=3, num_heads=2, num_kv_heads=2, num_experts=4,
                        top_k=2, max_seq_len=8)
    loads = np.random.default_rng(1).multinomial(400, [0.4, 0.3, 0.2, 0.1], size=(3, 4))
    on = simulate_iteration(model, cluster, system, loads, 2)
    off = simulate_iteration(model, cluster, system, loads, 2, comm_opt=False)
    assert off.iteration_s >= on.iteration_s
    assert off.layer_sum.exposed == pytest.approx(off.layer_sum.param_comm, rel=1e-12)


def test_bad_inputs_name_the_argument():
    cluster, compute = two_devices(1e9, 1e9)
    with pytest.raises(ValueError, match="^loads must be"):
        simulate_iteration(MODEL, cluster, "laer", np.ones((2, 2, 3), dtype=int), 1)
    with pytest.raises(ValueError, match="unknown system 'deepspeed'"):
        simulate_iteration(MODEL, cluster, "deepspeed", SKEW, 1)
    four = ModelConfig(vocab_size=16, hidden=4, ffn=8, num_layers=2, num_heads=2, num_kv_heads=2, num_experts=4,
                       top_k=1, max_seq_len=4)
    with pytest.raises(ValueError, match="^slots_per_device=1"):
        simulate_iteration(four, cluster, "laer", np.ones((2, 2, 4), dtype=int), 1)
    with pytest.raises(ValueError, match="^plan_loads must be"):
        simulate_iteration(MODEL, cluster, "laer", SKEW, 1, plan_loads=SKEW[:1])


@pytest.mark.parametrize("recompute", [False, True])
def test_device_times_include_the_wait_for_the_slowest_expert(recompute):
    peak, bw = 1e9, 1e9
    cluster, compute = two_devices(peak, bw)
    loads = np.array([[[5, 3], [1, 7]]] * 2)  # both layers: device 0 computes 5+1 routes, device 1 3+7
    r = simulate_iteration(MODEL, cluster, "megatron_ep", loads, 1, compute=compute, recompute=recompute,
                           microbatches=2)
    passes = 4 if recompute else 3  # expert forward, backward twice as long (and the recompute's forward)
    # Device 0 sends 3 routes to device 1 and receives 1; each device's dispatch (and combine) lasts max(3, 1) routes
    # of H = 4 bf16; 2 (or 4) of each per layer.
    own = (4 if recompute else 2) * 2 * 3 * 4 * 2 / bw
    expert = [2 * 2 * passes * expert_s(6, peak), 2 * 2 * passes * expert_s(10, peak)]  # 2 micro-batches x 2 layers
    wait = [2 * 2 * passes * (expert_s(10, peak) - expert_s(6, peak)), 0.0]
    assert r.device_expert_s.tolist() == pytest.approx(expert, rel=1e-12)
    assert r.device_alltoall_s.tolist() == pytest.approx([2 * 2 * own + w for w in wait], rel=1e-12)
    # Expert + all-to-all is the busiest device's experts plus one's own transfers on every device.
    assert r.device_expert_s[0] + r.device_alltoall_s[0] == pytest.approx(r.device_expert_s[1] + r.device_alltoall_s[1])


def test_non_expert_terms_add_score_kernels_and_memory_bound_bytes():
    peak, membw = 1e9, 1e6
    cluster = ClusterSpec("two", 1, 2, DeviceSpec("d", peak, 1e12, membw), intra_bw=1e30, inter_bw=1e30,
                          intra_latency=0.0, inter_latency=0.0)
    compute = ComputeModel(peak, default_efficiency=1.0)
    base = simulate_iteration(MODEL, cluster, "megatron_ep", SKEW, 1, compute=compute)
    extra = simulate_iteration(MODEL, cluster, "megatron_ep", SKEW, 1, compute=compute,
                               non_expert=NonExpert(attention_efficiency=0.5, elementwise_bytes=100.0))
    # Per layer forward, 8 tokens a device: the causal scores (2*S*q = 32 FLOPs a token) now run at half the peak,
    # and 100 bytes a token move at 1e6 B/s; forward + backward = 3 passes.
    more = 3 * (8 * 32 / (0.5 * peak) - 8 * 32 / peak + 8 * 100 / membw)
    assert [b.attention for b in extra.layers] == pytest.approx([b.attention + more for b in base.layers], rel=1e-9)


def test_ep_degree_groups_consecutive_experts():
    model = ModelConfig(vocab_size=16, hidden=4, ffn=8, num_layers=1, num_heads=2, num_kv_heads=2, num_experts=4,
                        top_k=1, max_seq_len=4)
    cluster = ClusterSpec("4", 1, 4, DeviceSpec("d", 1e9, 1e12, 1e12), intra_bw=1e9, inter_bw=1e9)
    loads = np.array([[[8, 4, 2, 2]] * 4])  # [L=1, N=4, E=4]: every device routes 8, 4, 2, 2 to experts 0..3
    # EP groups of 2 devices: devices 0 and 2 hold experts 0, 1; devices 1 and 3 hold 2, 3. Each expert's routes
    # split evenly over its two replicas: (4 * 8 + 4 * 4) / 2 = 24 on devices 0, 2 and (4 * 2 + 4 * 2) / 2 = 8.
    r = simulate_iteration(model, cluster, "megatron_ep", loads, 1, ep_degree=2)
    assert r.max_tokens.tolist() == [24]
    assert r.device_expert_s.tolist() == pytest.approx([3 * expert_s(24, 1e9 * 0.6), 3 * expert_s(8, 1e9 * 0.6)] * 2)
    with pytest.raises(ValueError, match="^ep_degree=3"):
        simulate_iteration(model, cluster, "megatron_ep", loads, 1, ep_degree=3)


def test_per_layer_planner_options_plan_each_layer_from_its_own():
    # FlexMoE's persisted layout differs per layer: with one start per layer, layer l is planned as a planner built
    # from start l plans it (tests/training/test_planner_cases.py's hand case: from the static layout one round
    # reaches a busiest device of 160 routes, from that round's layout 120).
    model = ModelConfig(vocab_size=16, hidden=4, ffn=8, num_layers=2, num_heads=2, num_kv_heads=2, num_experts=4,
                        top_k=1, max_seq_len=4)
    cluster = ClusterSpec("1x4", 1, 4, DeviceSpec("d", 1e12, 1e12, 1e12), intra_bw=1e11, inter_bw=1e11)
    compute = ComputeModel(1e12, default_efficiency=1.0)
    loads = np.zeros((2, 4, 4), dtype=np.int64)
    loads[:, 0] = [240, 80, 80, 40]
    objective = PlanObjective.for_model(cluster, model.hidden, model.ffn, False, compute)
    static = make_planner("flexmoe", 4, 2, 4, objective, max_moves=1)
    starts = [static.static_layout(4), static.plan(loads[0]).layout.slots]
    res = simulate_iteration(model, cluster, "flexmoe", loads, 2, compute,
                             planner_options=[{"max_moves": 1, "start": s} for s in starts])
    want = [make_planner("flexmoe", 4, 2, 4, objective, max_moves=1, start=s).plan(loads[0]).device_tokens.max()
            for s in starts]
    assert res.max_tokens.tolist() == want == [160, 120]
    with pytest.raises(ValueError, match="^planner_options: one dict, or one per layer"):
        simulate_iteration(model, cluster, "flexmoe", loads, 2, compute, planner_options=[{"max_moves": 1}])
