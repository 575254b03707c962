import math

import numpy as np
import pytest

from common import costmodel as cm
from common.topology import GB, ClusterSpec, DeviceSpec, a100_80g_4x8, get_cluster, h100_80g_4x8

DEV = DeviceSpec("toy", peak_flops=100.0, memory_bytes=1e9, memory_bandwidth=1e9)


def toy(nodes=2, per_node=2):
    # intra 100 B/s with 1 s latency, inter 10 B/s with 2 s latency: easy to compute by hand
    return ClusterSpec("toy", nodes, per_node, DEV, intra_bw=100.0, inter_bw=10.0, intra_latency=1.0, inter_latency=2.0)


def test_presets_match_the_papers():
    a = a100_80g_4x8()
    assert a.num_devices == 32 and a.devices_per_node == 8
    assert a.bandwidth(0, 7) == pytest.approx(216.269 * GB)
    assert a.bandwidth(0, 8) == pytest.approx(88.9539 * GB)
    h = h100_80g_4x8()
    assert h.bandwidth(8, 15) == 400 * GB and h.bandwidth(7, 8) == 200 * GB
    assert get_cluster("a100_80g_4x8", num_nodes=2).num_devices == 16


def test_node_map_and_matrices():
    c = toy()
    assert c.node_map().tolist() == [0, 0, 1, 1]
    assert [c.node_of(d) for d in range(4)] == [0, 0, 1, 1]
    bw = c.bandwidth_matrix()
    assert np.isinf(np.diag(bw)).all()
    assert bw[0, 1] == 100.0 and bw[1, 2] == 10.0 and bw[3, 2] == 100.0
    assert c.latency_matrix()[0, 3] == 2.0 and c.latency(2, 2) == 0.0
    with pytest.raises(IndexError, match="device 4"):
        c.node_of(4)


def test_bad_cluster_specs():
    with pytest.raises(ValueError, match="num_nodes"):
        ClusterSpec("bad", 0, 8, DEV, 1.0, 1.0)
    with pytest.raises(ValueError, match="inter_bw"):
        ClusterSpec("bad", 1, 8, DEV, 1.0, 0.0)
    with pytest.raises(ValueError, match="unknown cluster preset 'nope'"):
        get_cluster("nope")


def test_alltoall_hand_computed():
    c = toy()
    b = np.array([[5, 100, 20, 0], [0, 0, 0, 0], [0, 0, 0, 200], [10, 0, 0, 0]], dtype=float)
    t = cm.alltoall_device_times(b, c)
    # device 0 sends: to 1 (intra) 1 + 100/100 = 2; to 2 (inter) 2 + 20/10 = 4 -> 6; receives from 3: 2 + 10/10 = 3
    # device 1 receives from 0: 2;  device 2 receives 4, sends 1 + 200/100 = 3;  device 3 sends 3, receives 3
    assert t.tolist() == pytest.approx([6.0, 2.0, 4.0, 3.0])
    assert cm.alltoall_time(b, c) == pytest.approx(6.0)
    # the diagonal is a local copy: free
    assert cm.alltoall_time(np.diag([1e9] * 4), c) == 0.0


def test_alltoall_subgroup_and_errors():
    c = toy()
    b = np.array([[0, 50], [0, 0]], dtype=float)
    assert cm.alltoall_time(b, c, devices=[1, 3]) == pytest.approx(2 + 50 / 10)
    assert cm.alltoall_time(b, c, devices=[0, 1]) == pytest.approx(1 + 50 / 100)
    with pytest.raises(ValueError, match="shape"):
        cm.alltoall_time(np.zeros((3, 3)), c)
    with pytest.raises(ValueError, match="non-negative"):
        cm.alltoall_time(-np.ones((4, 4)), c)
    with pytest.raises(ValueError, match="out of range"):
        cm.alltoall_time(np.zeros((2, 2)), c, devices=[0, 9])


def test_ring_collectives_hand_computed():
    c = toy()
    # one node: 3 hops at intra speed per step; across nodes the ring's slowest hop is inter-node
    assert cm.allgather_time(50, c, devices=[0, 1]) == pytest.approx(1 * (1 + 50 / 100))
    assert cm.allgather_time(50, c) == pytest.approx(3 * (2 + 50 / 10))
    assert cm.reduce_scatter_time(50, c) == cm.allgather_time(50, c)
    assert cm.allreduce_time(400, c) == pytest.approx(2 * 3 * (2 + 100 / 10))
    assert cm.allgather_time(50, c, devices=[2]) == 0.0
    assert cm.p2p_time(30, c, 0, 1) == pytest.approx(1.3)
    assert cm.p2p_time(30, c, 1, 2) == pytest.approx(5.0)
    assert cm.p2p_time(30, c, 2, 2) == 0.0


def test_compute_model_interpolates_profile():
    m = cm.ComputeModel(peak_flops=100.0, flops_points=(1e2, 1e4), achieved_points=(10.0, 50.0))
    assert m.time(1e4) == pytest.approx(1e4 / 50.0)
    assert m.achieved(1e2) == pytest.approx(10.0)
    assert m.achieved(1e3) == pytest.approx(30.0)  # halfway in log space
    assert m.achieved(1e9) == pytest.approx(50.0)  # clamps beyond the table
    assert m.time(0) == 0.0
    assert cm.ComputeModel(peak_flops=100.0, default_efficiency=0.5).time(100.0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="ascending"):
        cm.ComputeModel(peak_flops=1.0, flops_points=(2.0, 1.0), achieved_points=(1.0, 1.0))


def test_swiglu_flops():
    assert cm.swiglu_expert_flops(10, 4, 8, backward=False) == 2 * 10 * 3 * 4 * 8
    assert cm.swiglu_expert_flops(10, 4, 8) == 3 * 2 * 10 * 3 * 4 * 8
    assert math.isclose(cm.swiglu_expert_flops(0, 4, 8), 0.0)
