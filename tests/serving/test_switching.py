"""The switch planner against a brute-force reference over model atoms (one unit x one 1/8 column slice), and
hand arithmetic on a toy two-node cluster."""

import math
import random
from fractions import Fraction

import pytest

from common.topology import ClusterSpec, DeviceSpec, get_cluster
from serving.costmodel.iteration import ReplicaConfig as R
from serving.costmodel.models import ModelSpec, get_model
from serving.executor.diff import diff_plans
from serving.scheduler.plan import DeploymentPlan
from serving.switching import (
    STORAGE,
    InflightRequest,
    SwitchOptions,
    TransferKind,
    cold_reload_s,
    plan_switch,
)
from serving.switching.shards import stage_layers

DEV = DeviceSpec("toy", peak_flops=100.0, memory_bytes=1e9, memory_bandwidth=1e9)
# 4 layers of 640 one-byte parameters, embedding and LM head 128 each: 2,816 bytes; KV 32 bytes a token (8 a layer).
TOY = ModelSpec("toy", num_layers=4, hidden=8, ffn=16, num_heads=2, num_kv_heads=2, vocab=16, gated_mlp=True,
                bytes_per_param=1)
Q = 8  # column atoms: every tp here divides 8


def toy_cluster(nodes=2, per_node=2, intra=100.0, inter=10.0, storage=4.0):
    return ClusterSpec("toy", nodes, per_node, DEV, intra_bw=intra, inter_bw=inter, intra_latency=1.0,
                       inter_latency=2.0, storage_bw=storage)


def plan(cfgs, devs=None):
    """A DeploymentPlan of these configs, packed on consecutive devices unless given."""
    if devs is None:
        devs, n = [], 0
        for c in cfgs:
            devs.append(tuple(range(n, n + c.gpus)))
            n += c.gpus
    k = len(cfgs)
    return DeploymentPlan(tuple(cfgs), tuple(tuple(d) for d in devs), tuple((1.0,) for _ in cfgs), (1.0,), 1.0,
                          0.5, (0.5,) * k, "test")


# ---- the reference: atoms, written out without the planner's geometry ----

def atom_bytes(model, u):
    table = model.vocab * model.hidden * model.bytes_per_param
    return (table if u in (0, model.num_layers + 1) else model.params_per_layer * model.bytes_per_param) / Q


def held_atoms(p, model):
    """device -> set of (unit, column atom) it holds under plan p: stage s of L / pp layers (+ embedding first,
    + LM head last), TP rank i the columns [i Q / tp, (i + 1) Q / tp)."""
    L, out = model.num_layers, {}
    for cfg, devs in zip(p.replicas, p.devices):
        per = L // cfg.pp
        for s in range(cfg.pp):
            units = set(range(1 + s * per, 1 + (s + 1) * per)) | ({0} if s == 0 else set()) \
                | ({L + 1} if s == cfg.pp - 1 else set())
            for i in range(cfg.tp):
                cols = range(i * Q // cfg.tp, (i + 1) * Q // cfg.tp)
                out[devs[s * cfg.tp + i]] = {(u, c) for u in units for c in cols}
    return out


def shard_atoms(shard):
    return {(u, c) for u in range(shard.first_unit, shard.end_unit)
            for c in range(int(shard.col_lo * Q), int(shard.col_hi * Q))}


def check_against_reference(cur, tgt, model, cluster):
    sp = plan_switch(cur, tgt, model, cluster)
    before = held_atoms(cur, model) if cur is not None else {}
    after = held_atoms(sp.target, model)
    holders = {}
    for d, atoms in before.items():
        for a in atoms:
            holders.setdefault(a, set()).add(d)
    kept_devs = {d for k in sp.kept for d in sp.target.devices[k]}
    got = {d: [] for d in after}
    for t in sp.transfers:
        assert t.kind is TransferKind.weights
        atoms = shard_atoms(t.shard)
        assert t.nbytes == pytest.approx(sum(atom_bytes(model, u) for u, _ in atoms))
        assert t.dst not in kept_devs, "a kept replica gets a transfer"
        if t.src == STORAGE:
            assert all(a not in holders for a in atoms), "loaded from storage although a device holds it"
        else:
            assert atoms <= before[t.src], f"device {t.src} sends what it does not hold"
        got[t.dst].extend(atoms)
    for d, need in after.items():
        if d in kept_devs:
            assert before[d] == need
            continue
        arrived = got[d] + sorted(need & before.get(d, set()))
        assert sorted(arrived) == sorted(need), f"device {d}: needed atoms not moved exactly once"
    # The schedule: no port carries two transfers at once.
    busy = {}
    for t in sp.transfers:
        ports = [("storage", cluster.node_of(t.dst))] if t.src == STORAGE else \
            [("tx", t.src, cluster.node_of(t.src) == cluster.node_of(t.dst)),
             ("rx", t.dst, cluster.node_of(t.src) == cluster.node_of(t.dst))]
        for p in ports:
            busy.setdefault(p, []).append((t.start_s, t.end_s))
    for spans in busy.values():
        spans.sort()
        assert all(a[1] <= b[0] + 1e-9 for a, b in zip(spans, spans[1:]))
    assert sp.total_s == pytest.approx(max((t.end_s for t in sp.transfers), default=0.0))
    assert tuple(new for _, new in diff_plans(cur, sp.target).keep) == sp.kept  # the executor keeps the same
    return sp


def random_plan(rng, cluster, model, max_gpus):
    """Random replicas (tp in 1..8, pp in 1, 2, 4) packed largest first on consecutive devices, node ids shuffled
    inside each node so that old and new layouts are not aligned."""
    cfgs, left = [], max_gpus
    while left > 0 and rng.random() < 0.85:
        options = [R(tp, pp) for tp in (1, 2, 4, 8) for pp in (1, 2, 4)
                   if tp <= cluster.devices_per_node and tp * pp <= left and pp <= model.num_layers]
        if not options:
            break
        c = rng.choice(options)
        cfgs.append(c)
        left -= c.gpus
    cfgs.sort(key=lambda c: -c.gpus)
    G = cluster.devices_per_node
    perm = []
    for n in range(cluster.num_nodes):
        ids = list(range(n * G, (n + 1) * G))
        rng.shuffle(ids)
        perm += ids
    devs, nxt = [], 0
    for c in cfgs:
        devs.append(tuple(perm[nxt:nxt + c.gpus]))
        nxt += c.gpus
    return plan(cfgs, devs)


@pytest.mark.parametrize("seed", range(40))
def test_every_needed_piece_moves_once_from_a_holder(seed):
    rng = random.Random(seed)
    cluster = toy_cluster(nodes=2, per_node=8)
    cur = None if seed % 10 == 0 else random_plan(rng, cluster, TOY, 16)
    tgt = random_plan(rng, cluster, TOY, 16)
    check_against_reference(cur, tgt, TOY, cluster)


@pytest.mark.parametrize("case", [([R(4)], [R(2), R(2)]), ([R(4), R(4)], [R(8)]), ([R(8)], [R(4), R(4)]),
                                  ([R(2)] * 4, [R(4)] * 2), ([R(8)], [R(4, 2)]), ([R(8)] * 4, [R(4)] * 8),
                                  ([R(4, 2)], [R(8, 2)])])
def test_representative_switches_on_h100(case):
    cluster, model = get_cluster("h100_80g_4x8"), get_model("llama2-70b")
    sp = check_against_reference(plan(case[0]), plan(case[1]), model, cluster)
    assert not any(t.src == STORAGE for t in sp.transfers)


def test_remap_reuses_what_is_in_place():
    cluster, model = get_cluster("h100_80g_4x8"), get_model("llama2-70b")
    W = model.weight_bytes
    # TP4 -> 2 x TP2: interleaving the old ranks leaves half of every new device's need in place (packing the TP2s
    # on devices (0, 1), (2, 3) as given would move 1.5 W).
    sp = plan_switch(plan([R(4)]), plan([R(2), R(2)]), model, cluster)
    assert sp.weight_bytes == pytest.approx(W) and sp.in_place_bytes == pytest.approx(W)
    # 2 x TP4 -> TP8: every eighth already sits on a device holding its quarter: nothing moves.
    sp = plan_switch(plan([R(4), R(4)]), plan([R(8)]), model, cluster)
    assert sp.transfers == () and sp.in_place_bytes == pytest.approx(W)


def test_kept_replicas_get_no_transfer():
    cluster, model = get_cluster("h100_80g_4x8"), get_model("llama2-70b")
    cur = plan([R(8), R(4), R(2), R(2)])
    sp = plan_switch(cur, cur, model, cluster)
    assert sp.transfers == () and sp.kept == (0, 1, 2, 3) and sp.removed == () and sp.replica_ready_s == (0.0,) * 4
    # The target asks for TP2s on 4-7, where two of the four current ones run: those two are kept.
    tgt = plan([R(8), R(4), R(2), R(2)], [(8, 9, 10, 11, 12, 13, 14, 15), (0, 1, 2, 3), (4, 5), (6, 7)])
    cur = plan([R(2)] * 4 + [R(4, 2)])
    sp = plan_switch(cur, tgt, model, cluster)
    assert sp.kept == (2, 3) and sp.kept_from == (2, 3) and sp.target.devices[2:] == ((4, 5), (6, 7))
    assert sp.removed == (0, 1, 4)
    assert not {t.dst for t in sp.transfers} & {4, 5, 6, 7}
    # The new TP4 lands on the stopped TP2s at 0-3, whose halves hold its quarters: rebuilt with nothing to move.
    assert sp.target.devices[1] in {(0, 2, 1, 3), (2, 0, 3, 1)} and not [t for t in sp.transfers if t.replica == 1]
    assert sp.replica_ready_s[1:] == (0.0, 0.0, 0.0) and sp.replica_ready_s[0] > 0
    # Asked elsewhere, a target TP2 still takes a running TP2 rather than a new place.
    sp = plan_switch(cur, plan([R(2)], [(8, 9)]), model, cluster)
    assert sp.kept == (0,) and sp.kept_from == (0,) and sp.transfers == ()


def test_time_matches_hand_arithmetic_on_two_nodes():
    # Toy cluster: 2 nodes x 2 devices, NVLink 100 B/s + 1 s, network 10 B/s + 2 s; the model is W = 2,816 bytes.
    cluster, W = toy_cluster(), TOY.weight_bytes
    assert W == 2816
    # One TP1 on device 0 -> four TP1s: device 0 kept; device 1 over NVLink (1 + W / 100); devices 2 and 3 both
    # from device 0's NIC, one after the other (2 + W / 10 each).
    sp = plan_switch(plan([R(1)]), plan([R(1)] * 4), TOY, cluster)
    assert sp.kept == (0,)
    by_dst = {t.dst: t for t in sp.transfers}
    assert sorted(by_dst) == [1, 2, 3] and all(t.src == 0 and t.nbytes == W for t in sp.transfers)
    assert (by_dst[1].start_s, by_dst[1].end_s) == pytest.approx((0.0, 1 + W / 100))
    first, second = sorted((by_dst[2], by_dst[3]), key=lambda t: t.start_s)
    assert (first.start_s, first.end_s) == pytest.approx((0.0, 2 + W / 10))
    assert (second.start_s, second.end_s) == pytest.approx((2 + W / 10, 2 * (2 + W / 10)))
    assert sp.total_s == pytest.approx(2 * (2 + W / 10)) == pytest.approx(max(sp.replica_ready_s))
    # TP2 on node 0 -> two TP2s: the new one on node 1 pulls each half over its own NIC pair, in parallel.
    sp = plan_switch(plan([R(2)]), plan([R(2), R(2)]), TOY, cluster)
    assert sp.kept == (0,) and sp.target.devices[1] in ((2, 3), (3, 2))
    assert len(sp.transfers) == 2 and {(t.src, t.nbytes) for t in sp.transfers} == {(0, W / 2), (1, W / 2)}
    assert all(t.start_s == 0.0 and t.end_s == pytest.approx(2 + W / 2 / 10) for t in sp.transfers)
    assert sp.replica_ready_s == pytest.approx((0.0, 2 + W / 20))


def test_intra_node_source_before_inter_node():
    # The network here is faster than NVLink, so only the preference can pick device 0 for device 1.
    cluster = toy_cluster(intra=10.0, inter=100.0)
    cur = plan([R(1), R(1)], [(0,), (2,)])
    sp = plan_switch(cur, plan([R(1)] * 3, [(0,), (2,), (1,)]), TOY, cluster)
    assert [(t.src, t.dst) for t in sp.transfers] == [(0, 1)]
    # With no holder on its node, a device pulls across nodes (never from storage).
    sp = plan_switch(plan([R(1)]), plan([R(1), R(1)]), TOY, toy_cluster(nodes=2, per_node=1))
    assert [(t.src, t.dst) for t in sp.transfers] == [(0, 1)]


def test_storage_only_when_no_device_holds_a_piece():
    cluster = toy_cluster(storage=4.0)
    tgt = plan([R(2), R(1), R(1)])
    for cur in (None, plan([])):
        sp = plan_switch(cur, tgt, TOY, cluster)
        assert sp.transfers and all(t.src == STORAGE for t in sp.transfers)
        assert sp.weight_bytes == pytest.approx(3 * TOY.weight_bytes)
        # Node 0 reads the TP2 (W), node 1 two whole copies (2 W), each at 4 B/s.
        assert sp.total_s == pytest.approx(2 * TOY.weight_bytes / 4)
    assert cold_reload_s(tgt, TOY, cluster) == pytest.approx(2 * TOY.weight_bytes / 4 + 75.0)
    assert cold_reload_s(tgt, TOY, cluster, SwitchOptions(storage_bw=8.0, engine_startup_s=1.0)) == \
        pytest.approx(2 * TOY.weight_bytes / 8 + 1.0)
    sp = plan_switch(plan([R(1)]), tgt, TOY, cluster)
    assert not any(t.src == STORAGE for t in sp.transfers)


def test_cold_reload_of_llama2_70b_takes_minutes():
    cluster, model = get_cluster("h100_80g_4x8"), get_model("llama2-70b")
    # Four TP8 replicas: each node reads one copy (138 GB at 5 GB/s) in parallel, then the engines start.
    t = cold_reload_s(plan([R(8)] * 4), model, cluster)
    assert t == pytest.approx(model.weight_bytes / cluster.storage_bw + SwitchOptions().engine_startup_s)
    assert t > 60 > plan_switch(plan([R(8)] * 4), plan([R(4)] * 8), model, cluster).total_s


def test_kv_drains_short_and_moves_long_requests_into_headroom():
    cluster = toy_cluster(nodes=2, per_node=4)
    opts = SwitchOptions(kv_move_min_tokens=100, kv_headroom=0.2, kv_capacity_tokens=1000)
    cur = plan([R(4)])
    tgt = plan([R(2), R(2)])
    reqs = [InflightRequest(0, 0, 99, 5), InflightRequest(1, 0, 100, 5), InflightRequest(2, 0, 700, 5),
            InflightRequest(3, 0, 500, 1), InflightRequest(4, 0, 400, 0), InflightRequest(5, 0, 0, 3)]
    sp = plan_switch(cur, tgt, TOY, cluster, reqs, opts)
    act = {a.request: a for a in sp.kv}
    assert sorted(act) == [0, 1, 2, 3, 4, 5]
    assert not act[0].move and not act[5].move and act[0].ready_s == 0.0 and act[0].dst_replica is None
    assert act[1].move and act[2].move
    # Buffers: ceil(1.2 x context) tokens, at most 1,000 per replica (700 -> 840 and 500 -> 600 cannot share one).
    for a in sp.kv:
        if a.move:
            assert a.buffer_tokens == math.ceil(1.2 * reqs[a.request].context_tokens)
    for k in (0, 1):
        assert sum(a.buffer_tokens for a in sp.kv if a.move and a.dst_replica == k) <= 1000
    assert act[2].dst_replica != act[3].dst_replica
    # 840 + 600 + 480 + 120 > 2,000: the last one that does not fit drains although it is long.
    assert [a.request for a in sp.kv if not a.move] == [0, 4, 5]
    # Each moved request's KV arrives exactly once: what is not already on its new devices moves.
    for a in sp.kv:
        if not a.move:
            assert not [t for t in sp.transfers if t.request == a.request]
            continue
        moved = [t for t in sp.transfers if t.request == a.request]
        assert all(t.kind is TransferKind.kv and t.replica == a.dst_replica for t in moved)
        ctx = reqs[a.request].context_tokens
        # TP4 -> TP2: each TP2 device keeps its own quarter of the heads and receives the other: half moves.
        assert sum(t.nbytes for t in moved) == pytest.approx(ctx * TOY.kv_bytes_per_token / 2)
        assert a.ready_s == pytest.approx(max([sp.replica_ready_s[a.dst_replica]] + [t.end_s for t in moved]))
    assert sp.kv_bytes == pytest.approx(sum(t.nbytes for t in sp.transfers if t.kind is TransferKind.kv))


def test_kv_of_kept_replicas_stays_and_fills_their_room():
    cluster = toy_cluster(nodes=2, per_node=4)
    opts = SwitchOptions(kv_move_min_tokens=10, kv_headroom=0.1, kv_capacity_tokens=1000)
    cur = plan([R(2), R(2)])
    tgt = plan([R(2), R(1), R(1)])  # replica 0 kept; replica 1 of the current plan stops
    reqs = [InflightRequest(0, 0, 800, 5), InflightRequest(1, 1, 300, 5)]
    sp = plan_switch(cur, tgt, TOY, cluster, reqs, opts)
    assert [a.request for a in sp.kv] == [1]  # the kept replica's request needs no action
    # 880 tokens already fill the kept replica: 330 more do not fit there.
    assert sp.kv[0].move and sp.kv[0].dst_replica in (1, 2)


def test_stage_split_follows_vllm():
    assert stage_layers(80, 3) == [(0, 27), (27, 54), (54, 80)]
    assert stage_layers(5, 4) == [(0, 1), (1, 2), (2, 4), (4, 5)]
    assert stage_layers(80, 4) == [(0, 20), (20, 40), (40, 60), (60, 80)]


def test_bad_input_is_one_line_error():
    cluster = toy_cluster()
    bad = [
        (None, plan([R(2)] * 3), (), "needs 6 GPUs"),
        (None, plan([R(2)], [(1, 2)]), (), "crosses nodes"),
        (plan([R(2)]), plan([R(1)]), [InflightRequest(0, 0, -1, 4)], "negative tokens"),
        (plan([R(2)]), plan([R(1)]), [InflightRequest(0, 3, 10, 4)], "replica 3"),
        (None, plan([R(1)], [(0,)]), [InflightRequest(0, 0, 10, 4)], "replica 0"),
        (None, plan([R(1), R(1)], [(0,), (0,)]), (), "already used"),
    ]
    for cur, tgt, reqs, msg in bad:
        with pytest.raises(ValueError, match=msg) as e:
            plan_switch(cur, tgt, TOY, cluster, reqs)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="kv_headroom"):
        SwitchOptions(kv_headroom=-0.1)
    with pytest.raises(ValueError, match="storage_bw"):
        toy_cluster(storage=0.0)
    assert Fraction(1, 2)  # fractions stay exact in shards (imported for the reference's column atoms)


@pytest.mark.parametrize("seed", range(30))
def test_remap_keeps_at_least_what_the_packing_keeps(seed):
    # Reference: the bytes in place and replicas kept with the target's own device lists, counted on atoms.
    rng = random.Random(100 + seed)
    cluster = toy_cluster(nodes=2, per_node=8)
    cur, tgt = random_plan(rng, cluster, TOY, 16), random_plan(rng, cluster, TOY, 16)

    def in_place(p):
        before, after = held_atoms(cur, TOY), held_atoms(p, TOY)
        return sum(atom_bytes(TOY, u) for d, need in after.items() for u, _ in need & before.get(d, set()))

    sp = plan_switch(cur, tgt, TOY, cluster)
    assert in_place(sp.target) >= in_place(tgt) - 1e-9
    assert sp.in_place_bytes + sum(in_place(plan([sp.target.replicas[k]], [sp.target.devices[k]]))
                                   for k in sp.kept) == pytest.approx(in_place(sp.target))
    assert sorted(map(str, sp.target.replicas)) == sorted(map(str, tgt.replicas))


def test_kv_moves_inside_the_node_before_across():
    # The TP1 on device 0 stops; the kept TP1s on device 1 (same node) and device 2 (other node) both have room, and
    # the network is the faster link here: the KV still goes to device 1.
    cluster = toy_cluster(nodes=2, per_node=2, intra=10.0, inter=100.0)
    opts = SwitchOptions(kv_move_min_tokens=1, kv_capacity_tokens=10_000)
    cur = plan([R(1)] * 3, [(0,), (1,), (2,)])
    sp = plan_switch(cur, plan([R(1), R(1)], [(1,), (2,)]), TOY, cluster, [InflightRequest(0, 0, 50, 1)], opts)
    assert sp.kept == (0, 1) and sp.removed == (0,)
    assert sp.kv[0].move and sp.kv[0].dst_replica == 0
    assert [(t.src, t.dst, t.nbytes) for t in sp.transfers] == [(0, 1, 50 * TOY.kv_bytes_per_token)]
    assert sp.kv[0].ready_s == pytest.approx(1 + 50 * TOY.kv_bytes_per_token / 10)
