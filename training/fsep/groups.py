"""Process groups and topology the FSEP runtime runs on, passed in (never module globals)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class FSEPGroups:
    # Expert-sharding group: N devices, each holding a [E, ceil(P/N)] shard of every expert. Backend (gloo/NCCL) is
    # whatever the caller initialised; the runtime only moves tensors on the device its parameters live on.
    ep: dist.ProcessGroup
    # Devices per node G, for the routing rule's "prefer replicas on my node"; divides N. No default: a silent 1 on
    # a multi-GPU node would turn node-local routing into device-local. Entry points take it from the launcher
    # (`from_launcher`).
    devices_per_node: int

    # Group over the same ranks for restore and gradient-scatter traffic, apart from the token all-to-alls, so NCCL
    # (one stream per group) runs them concurrently instead of in issue order. None: both on `ep`.
    restore: dist.ProcessGroup | None = None

    def __post_init__(self):
        g, n = self.devices_per_node, self.size
        if not isinstance(g, numbers.Integral) or g < 1 or n % g:
            raise ValueError(f"FSEPGroups: devices_per_node={g} does not divide the EP group's {n} devices")

    @classmethod
    def from_launcher(cls, ep: dist.ProcessGroup, env: Mapping[str, str], devices_per_node: int | None = None
                      ) -> FSEPGroups:
        """Devices per node from the launcher's LOCAL_WORLD_SIZE (torchrun and the DeepSpeed launcher set it) when
        `env` has it, else the explicit `devices_per_node`; both given and different, or neither: ValueError."""
        local = env.get("LOCAL_WORLD_SIZE")
        if local is not None:
            if devices_per_node is not None and int(local) != devices_per_node:
                raise ValueError(f"devices_per_node={devices_per_node} disagrees with the launcher's "
                                 f"LOCAL_WORLD_SIZE={local}")
            return cls(ep, int(local))
        if devices_per_node is None:
            raise ValueError("devices_per_node: no LOCAL_WORLD_SIZE from a launcher; pass it explicitly")
        return cls(ep, devices_per_node)

    @classmethod
    def create(cls, ep: dist.ProcessGroup, **fields) -> FSEPGroups:
        """Groups over `ep`'s ranks with a separate restore group (collective: every rank of the world calls it);
        `fields` are the other fields (devices_per_node)."""
        return cls(ep, restore=dist.new_group(dist.get_process_group_ranks(ep)), **fields)

    @property
    def restore_group(self) -> dist.ProcessGroup:
        return self.ep if self.restore is None else self.restore

    @property
    def size(self) -> int:
        return dist.get_world_size(self.ep)

    @property
    def rank(self) -> int:
        return dist.get_rank(self.ep)
