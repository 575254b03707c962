"""Alpha-beta communication times and compute times on a ClusterSpec.

Notation: N devices in the group, B[i, k] bytes device i sends to device k.
A message from i to k costs latency(i, k) + bytes / bandwidth(i, k). A device sends to its peers one after another
and sends and receives at the same time, so its all-to-all time is max(its send time, its receive time).
Ring collectives move (n - 1) shards over the slowest link of the ring.
Where a node's NICs are shared (ClusterSpec.node_inter_bw), its devices' cross-node all-to-all bytes share them
fairly (processor sharing): a device sending b_i across nodes finishes after sum_j min(b_j, b_i) / node_inter_bw
(j over its node's devices), or b_i / inter_bw if that is longer; receiving likewise.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.topology import ClusterSpec


def _group(cluster: ClusterSpec, devices: Sequence[int] | None) -> np.ndarray:
    ids = np.arange(cluster.num_devices) if devices is None else np.asarray(devices, dtype=int)
    if ids.size == 0:
        raise ValueError("empty device group")
    if ids.min() < 0 or ids.max() >= cluster.num_devices:
        raise ValueError(f"device group {ids.tolist()} out of range for {cluster.num_devices} devices")
    return ids


def alltoall_device_times(bytes_matrix: np.ndarray, cluster: ClusterSpec, devices: Sequence[int] | None = None) -> np.ndarray:
    """[n] seconds each device of the group spends in one all-to-all.

    bytes_matrix: [n, n], bytes from group member i to group member k (the diagonal is a local copy and costs nothing).
    """
    ids = _group(cluster, devices)
    b = np.asarray(bytes_matrix, dtype=float)
    if b.shape != (ids.size, ids.size):
        raise ValueError(f"bytes_matrix shape {b.shape} does not match group of {ids.size} devices")
    if np.any(b < 0) or not np.all(np.isfinite(b)):
        raise ValueError("bytes_matrix must be finite and non-negative")
    bw = cluster.bandwidth_matrix()[np.ix_(ids, ids)]
    lat = cluster.latency_matrix()[np.ix_(ids, ids)]
    off = ~np.eye(ids.size, dtype=bool)
    # Per message: latency only where something is sent.
    per_msg = np.where((b > 0) & off, lat + b / bw, 0.0)
    send = per_msg.sum(axis=1)
    recv = per_msg.sum(axis=0)
    if cluster.node_inter_bw is not None:
        nodes = cluster.node_map()[ids]
        cross = b * (nodes[:, None] != nodes[None, :])  # [n, n] bytes that leave the sender's node
        send = send + _shared_nic_excess(cross.sum(axis=1), nodes, cluster)
        recv = recv + _shared_nic_excess(cross.sum(axis=0), nodes, cluster)
    return np.maximum(send, recv)


def _shared_nic_excess(cross_bytes: np.ndarray, nodes: np.ndarray, cluster: ClusterSpec) -> np.ndarray:
    """[n] seconds a shared node NIC adds to each device's cross-node transfer: its processor-sharing finish time
    sum_j min(b_j, b_i) / node_inter_bw over the devices j of its node, less the b_i / inter_bw already counted."""
    same = nodes[:, None] == nodes[None, :]  # [n, n]
    shared = (np.minimum(cross_bytes[None, :], cross_bytes[:, None]) * same).sum(axis=1) / cluster.node_inter_bw
    return np.maximum(0.0, shared - cross_bytes / cluster.inter_bw)


def alltoall_time(bytes_matrix: np.ndarray, cluster: ClusterSpec, devices: Sequence[int] | None = None) -> float:
    """Seconds until the slowest device finishes one all-to-all."""
    return float(alltoall_device_times(bytes_matrix, cluster, devices).max())


def _ring(cluster: ClusterSpec, ids: np.ndarray) -> tuple[float, float]:
    """(bandwidth, latency) of the slowest hop of a ring over the group in device order."""
    if ids.size == 1:
        return float("inf"), 0.0
    nxt = np.roll(ids, -1)
    bw = min(cluster.bandwidth(int(a), int(b)) for a, b in zip(ids, nxt))
    lat = max(cluster.latency(int(a), int(b)) for a, b in zip(ids, nxt))
    return bw, lat


def allgather_time(shard_bytes: float, cluster: ClusterSpec, devices: Sequence[int] | None = None) -> float:
    """Ring all-gather: every device ends with n shards of shard_bytes each."""
    ids = _group(cluster, devices)
    bw, lat = _ring(cluster, ids)
    return (ids.size - 1) * (lat + shard_bytes / bw)


def reduce_scatter_time(shard_bytes: float, cluster: ClusterSpec, devices: Sequence[int] | None = None) -> float:
    """Ring reduce-scatter of an n * shard_bytes buffer: the mirror image of all-gather."""
    return allgather_time(shard_bytes, cluster, devices)


def allreduce_time(total_bytes: float, cluster: ClusterSpec, devices: Sequence[int] | None = None) -> float:
    """Ring all-reduce = reduce-scatter + all-gather of total_bytes / n shards."""
    ids = _group(cluster, devices)
    return 2 * allgather_time(total_bytes / ids.size, cluster, ids)


def p2p_time(nbytes: float, cluster: ClusterSpec, src: int, dst: int) -> float:
    if src == dst:
        return 0.0
    return cluster.latency(src, dst) + nbytes / cluster.bandwidth(src, dst)


@dataclass(frozen=True)
class ComputeModel:
    """Compute time from FLOPs: flops / (peak * efficiency(flops)).

    efficiency is interpolated in log(FLOPs) from profiled (flops, achieved FLOP/s) points, or a constant when
    there is no profile. Large kernels approach the best measured efficiency; tiny ones pay their launch overhead.
    """

    peak_flops: float  # FLOP/s the efficiency is relative to
    flops_points: tuple[float, ...] = ()  # FLOPs of each profiled kernel, ascending
    achieved_points: tuple[float, ...] = ()  # achieved FLOP/s at each point
    default_efficiency: float = 0.6  # used when no profile is given

    def __post_init__(self):
        if len(self.flops_points) != len(self.achieved_points):
            raise ValueError("flops_points and achieved_points differ in length")
        if list(self.flops_points) != sorted(self.flops_points):
            raise ValueError("flops_points must be ascending")
        if not self.peak_flops > 0:
            raise ValueError(f"peak_flops must be > 0, got {self.peak_flops}")

    def achieved(self, flops: float) -> float:
        """FLOP/s a kernel of this many FLOPs reaches."""
        if not self.flops_points:
            return self.peak_flops * self.default_efficiency
        x = np.log(max(flops, 1.0))
        return float(np.interp(x, np.log(self.flops_points), self.achieved_points))

    def time(self, flops: float) -> float:
        if flops <= 0:
            return 0.0
        return flops / self.achieved(flops)

    @classmethod
    def from_profile(cls, path: str | Path) -> ComputeModel:
        """Load the matmul table of a profile written by ``python -m common.profiling``."""
        path = Path(path)
        try:
            prof = json.loads(path.read_text())
            rows = sorted(prof["matmul"], key=lambda r: r["flops"])
            return cls(
                peak_flops=float(prof["summary"]["matmul_peak_flops"]),
                flops_points=tuple(float(r["flops"]) for r in rows),
                achieved_points=tuple(float(r["flops_per_s"]) for r in rows),
            )
        except FileNotFoundError:
            raise FileNotFoundError(f"no profile at {path}") from None
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"profile {path} is malformed: {e!r}") from None


def swiglu_expert_flops(tokens: float, hidden: int, ffn: int, backward: bool = True) -> float:
    """FLOPs of a SwiGLU expert (w1, w3: [F, H], w2: [H, F]) on `tokens` tokens; backward costs twice forward."""
    fwd = 2.0 * tokens * 3 * hidden * ffn
    return fwd * 3 if backward else fwd
