"""The FSEP routing rule (`training.routing`): hand-computed splits, its properties, and the traffic summary."""

import numpy as np
import pytest

from training.placement import Placement
from training.routing import fsep_routing, traffic_summary


def test_fsep_routing_hand_computed():
    # 2 nodes x 2 devices; expert 0 on devices 0 and 2 (one per node), expert 1 on device 1 only.
    p = Placement(np.array([[0], [1], [0], [1]]), num_experts=2)
    loads = np.array([[4, 3], [0, 0], [5, 2], [7, 0]])
    r = fsep_routing(loads, p, devices_per_node=2)
    # expert 0 has a local replica on both nodes: tokens stay on the node
    assert r[0, 0].tolist() == [4, 0, 0, 0]
    assert r[2, 0].tolist() == [0, 0, 5, 0]
    assert r[3, 0].tolist() == [0, 0, 7, 0]
    # expert 1 lives on devices 1 and 3: each node has one
    assert r[0, 1].tolist() == [0, 3, 0, 0]
    assert r[2, 1].tolist() == [0, 0, 0, 2]
    assert (r.sum(2) == loads).all()


def test_fsep_routing_split_and_remote():
    # expert 0 has two replicas on node 0 only (one of them twice on device 1); node 1 must go remote
    p = Placement(np.array([[0], [0], [1], [1]]), num_experts=2)
    p2 = Placement(np.array([[0, 1], [0, 0], [1, 1], [1, 1]]), num_experts=2)
    loads = np.array([[0, 0], [0, 0], [7, 0], [0, 0]])
    r = fsep_routing(loads, p, devices_per_node=2)
    # 7 over 2 replicas: 3 each, the remainder to replica (source 2) mod 2 = 0
    assert r[2, 0].tolist() == [4, 3, 0, 0]
    r2 = fsep_routing(loads, p2, devices_per_node=2)
    # three replicas (device 0 once, device 1 twice): 2 each, the remainder to replica 2 mod 3 (on device 1)
    assert r2[2, 0].tolist() == [2, 5, 0, 0]


def test_fsep_routing_properties_random():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n, e, c, g = 4, 6, 3, 2
        slots = rng.integers(0, e, size=(n, c))
        slots.ravel()[:e] = np.arange(e)  # every expert at least once
        p = Placement(slots, e)
        loads = rng.integers(0, 50, size=(n, e))
        r = fsep_routing(loads, p, g)
        assert (r.sum(2) == loads).all()
        held = p.holders() > 0  # [E, N]
        assert (r * ~held[None]).sum() == 0  # only to holders
        node = np.arange(n) // g
        for i in range(n):
            for j in range(e):
                local = held[j] & (node == node[i])
                if local.any():
                    assert r[i, j, ~local].sum() == 0  # node-local replicas take everything


def test_fsep_routing_errors():
    p = Placement(np.array([[0], [0]]), num_experts=2)
    with pytest.raises(ValueError, match="expert 1 receives tokens from device 0"):
        fsep_routing(np.array([[0, 1], [0, 0]]), p, 2)
    with pytest.raises(ValueError, match="shape"):
        fsep_routing(np.zeros((3, 2)), p, 1)
    with pytest.raises(ValueError, match="non-negative"):
        fsep_routing(np.array([[-1, 0], [0, 0]]), p, 1)


def test_traffic_summary_hand_computed():
    # 2 nodes x 2 devices. Source 0 keeps 1 token, sends 2 to device 1 (same node) and 3 to device 2 (other node).
    routing = np.zeros((4, 1, 4), dtype=np.int64)
    routing[0, 0] = [1, 2, 3, 0]
    routing[3, 0] = [0, 0, 4, 5]
    tokens, intra, inter = traffic_summary(routing, 2)
    assert tokens.tolist() == [1, 2, 7, 5]
    assert intra.tolist() == [2, 0, 0, 4]
    assert inter.tolist() == [3, 0, 0, 0]
