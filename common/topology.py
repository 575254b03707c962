"""Cluster topology: nodes x devices, one device spec, intra- and inter-node links.

Notation: N devices in all, G devices per node, devices numbered node-major (device d is on node d // G).
Bandwidths are bytes/s per direction per device; latencies are seconds per message.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path

import numpy as np

GB = 1e9


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    peak_flops: float  # dense bf16 FLOP/s (fp32 for CPUs)
    memory_bytes: float  # device memory usable by the framework
    memory_bandwidth: float  # bytes/s, device memory <-> compute


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    num_nodes: int
    devices_per_node: int
    device: DeviceSpec
    intra_bw: float  # bytes/s per device between two devices of one node (NVLink, shared memory)
    inter_bw: float  # bytes/s per device between devices on different nodes (InfiniBand NIC per device)
    intra_latency: float = 5e-6  # s per message inside a node
    inter_latency: float = 10e-6  # s per message across nodes
    # bytes/s one node reads model weights from storage. 5 GB/s: ServerlessLLM (Fu et al., OSDI'24) quotes a
    # 130 GB checkpoint in ~26 s at 5 GB/s (and 84 s to load LLaMA-2-70B with the usual loaders).
    storage_bw: float = 5 * GB
    # bytes/s per direction of one node's NICs together, shared by the cross-node all-to-all traffic of all its
    # devices (a node with fewer NICs than devices); None: no shared limit, each device has inter_bw to itself.
    # Ring collectives cross a node boundary once per ring (NCCL spreads its rings over the NICs), so they keep
    # inter_bw; see common.costmodel.alltoall_device_times for how all-to-alls share it.
    node_inter_bw: float | None = None

    def __post_init__(self):
        for key in ("num_nodes", "devices_per_node"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"ClusterSpec {self.name!r}: {key} must be >= 1, got {getattr(self, key)}")
        for key in ("intra_bw", "inter_bw", "storage_bw"):
            if not getattr(self, key) > 0:
                raise ValueError(f"ClusterSpec {self.name!r}: {key} must be > 0, got {getattr(self, key)}")
        if self.node_inter_bw is not None and not self.node_inter_bw > 0:
            raise ValueError(f"ClusterSpec {self.name!r}: node_inter_bw must be > 0 or None, got {self.node_inter_bw}")
        for key in ("intra_latency", "inter_latency"):
            if getattr(self, key) < 0:
                raise ValueError(f"ClusterSpec {self.name!r}: {key} must be >= 0, got {getattr(self, key)}")

    @property
    def num_devices(self) -> int:
        return self.num_nodes * self.devices_per_node

    def node_of(self, device: int) -> int:
        if not 0 <= device < self.num_devices:
            raise IndexError(f"device {device} out of range for {self.num_devices} devices in {self.name!r}")
        return device // self.devices_per_node

    def node_map(self) -> np.ndarray:
        """[N] node index of every device."""
        return np.arange(self.num_devices) // self.devices_per_node

    def same_node(self) -> np.ndarray:
        """[N, N] bool, True where two devices share a node (the diagonal included)."""
        nodes = self.node_map()
        return nodes[:, None] == nodes[None, :]

    def bandwidth(self, a: int, b: int) -> float:
        """Bytes/s from device a to device b (inf to itself: a local copy costs nothing here)."""
        if a == b:
            return float("inf")
        return self.intra_bw if self.node_of(a) == self.node_of(b) else self.inter_bw

    def latency(self, a: int, b: int) -> float:
        if a == b:
            return 0.0
        return self.intra_latency if self.node_of(a) == self.node_of(b) else self.inter_latency

    def bandwidth_matrix(self) -> np.ndarray:
        """[N, N] bytes/s; inf on the diagonal."""
        bw = np.where(self.same_node(), self.intra_bw, self.inter_bw).astype(float)
        np.fill_diagonal(bw, np.inf)
        return bw

    def latency_matrix(self) -> np.ndarray:
        """[N, N] seconds; 0 on the diagonal."""
        lat = np.where(self.same_node(), self.intra_latency, self.inter_latency).astype(float)
        np.fill_diagonal(lat, 0.0)
        return lat

    def with_shape(self, num_nodes: int, devices_per_node: int | None = None) -> ClusterSpec:
        """The same hardware with another node count (and optionally devices per node)."""
        return replace(
            self,
            num_nodes=num_nodes,
            devices_per_node=self.devices_per_node if devices_per_node is None else devices_per_node,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ClusterSpec:
        d = dict(d)
        d["device"] = DeviceSpec(**d["device"])
        return cls(**d)


A100_80G = DeviceSpec("A100-SXM4-80GB", peak_flops=312e12, memory_bytes=80 * 2**30, memory_bandwidth=2.039e12)
H100_80G = DeviceSpec("H100-SXM5-80GB", peak_flops=989e12, memory_bytes=80 * 2**30, memory_bandwidth=3.35e12)

PROFILE_DIR = Path(__file__).parent / "profiles"


def a100_80g_4x8() -> ClusterSpec:
    # The LAER-MoE paper's cluster; bandwidths are the ones its planner's cost model measured.
    return ClusterSpec("a100_80g_4x8", 4, 8, A100_80G, intra_bw=216.269 * GB, inter_bw=88.9539 * GB)


def h100_80g_4x8() -> ClusterSpec:
    # OServe's cluster: NVLink 400 GB/s inside a node, InfiniBand 200 GB/s across.
    return ClusterSpec("h100_80g_4x8", 4, 8, H100_80G, intra_bw=400 * GB, inter_bw=200 * GB)


def local_cpu(profile_path: str | Path | None = None) -> ClusterSpec:
    """This machine as a one-node cluster, from a profile written by ``python -m common.profiling``."""
    path = Path(profile_path) if profile_path else PROFILE_DIR / "local_cpu.json"
    try:
        prof = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"local_cpu: no profile at {path}; run `python -m common.profiling --out {path}`") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"local_cpu: {path} is not valid JSON: {e}") from None
    try:
        summary = prof["summary"]
        dev = DeviceSpec(
            prof["device"]["name"],
            peak_flops=float(summary["matmul_peak_flops"]),
            memory_bytes=float(prof["device"]["memory_bytes"]),
            memory_bandwidth=float(summary.get("memory_bandwidth", 1e10)),
        )
        world = int(summary.get("alltoall_world", 2))
        return ClusterSpec(
            "local_cpu", 1, world, dev,
            intra_bw=float(summary["alltoall_bw"]), inter_bw=float(summary["alltoall_bw"]),
            intra_latency=float(summary["alltoall_latency"]), inter_latency=float(summary["alltoall_latency"]),
        )
    except KeyError as e:
        raise ValueError(f"local_cpu: profile {path} lacks key {e}") from None


PRESETS = {"a100_80g_4x8": a100_80g_4x8, "h100_80g_4x8": h100_80g_4x8, "local_cpu": local_cpu}
# The preset names as an Enum, so a config can reject an unknown preset when it is built.
ClusterPreset = Enum("ClusterPreset", {name: name for name in PRESETS}, type=str)


def get_cluster(preset: str | ClusterPreset, num_nodes: int | None = None,
                devices_per_node: int | None = None) -> ClusterSpec:
    """A preset by name, optionally resized (same hardware, other shape)."""
    name = preset.value if isinstance(preset, ClusterPreset) else preset
    if name not in PRESETS:
        raise ValueError(f"unknown cluster preset {name!r}; known: {sorted(PRESETS)}")
    spec = PRESETS[name]()
    if num_nodes is not None or devices_per_node is not None:
        spec = spec.with_shape(num_nodes or spec.num_nodes, devices_per_node)
    return spec
