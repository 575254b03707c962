"""The shared node NIC (ClusterSpec.node_inter_bw) in all-to-all times, on a hand-computed 2 x 2 cluster."""

import numpy as np
import pytest

from common.costmodel import alltoall_device_times, alltoall_time
from common.topology import ClusterSpec, DeviceSpec

DEV = DeviceSpec("d", 1e12, 1e12, 1e12)


def two_by_two(node_inter_bw: float | None) -> ClusterSpec:
    return ClusterSpec("2x2", 2, 2, DEV, intra_bw=100.0, inter_bw=10.0, intra_latency=0.0, inter_latency=0.0,
                       node_inter_bw=node_inter_bw)


def test_node_nic_is_shared_fairly_by_its_devices():
    # Devices 0, 1 on node 0 send 40 and 10 bytes to device 2 (node 1); device 3 sends 20 bytes to device 1.
    b = np.zeros((4, 4))
    b[0, 2], b[1, 2], b[3, 1] = 40.0, 10.0, 20.0
    free = alltoall_device_times(b, two_by_two(None))
    assert free.tolist() == pytest.approx([4.0, 2.0, 5.0, 2.0])  # max(send, recv) at 10 B/s per device
    shared = alltoall_device_times(b, two_by_two(10.0))
    # Node 0's NIC at 10 B/s: device 1 finishes after 2 * 10 bytes (min with device 0's 40), device 0 after 50;
    # device 1 also receives 20 bytes alone on its node (2 s). Node 1: device 2 receives 50 bytes alone (5 s), device
    # 3 sends 20 alone (2 s).
    assert shared.tolist() == pytest.approx([5.0, 2.0, 5.0, 2.0])
    # A NIC faster than the devices' own links changes nothing.
    assert alltoall_device_times(b, two_by_two(1e6)).tolist() == pytest.approx(free.tolist())
    # Intra-node traffic never touches the NIC.
    local = np.zeros((4, 4))
    local[0, 1] = 100.0
    assert alltoall_time(local, two_by_two(1.0)) == pytest.approx(1.0)


def test_node_inter_bw_must_be_positive():
    with pytest.raises(ValueError, match="node_inter_bw"):
        two_by_two(0.0)
