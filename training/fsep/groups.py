"""Process groups and topology the FSEP runtime runs on, passed in (never module globals)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class FSEPGroups:
    # Expert-sharding group: N devices, each holding a [E, ceil(P/N)] shard of every expert. Backend (gloo/NCCL) is
    # whatever the caller initialised; the runtime only moves tensors on the device its parameters live on.
    ep: dist.ProcessGroup
    # Devices per node, for the routing rule's "prefer replicas on my node". 1 on a single-process-per-node test.
    devices_per_node: int = 1
    # Group over the same ranks for restore and gradient-scatter traffic, apart from the token all-to-alls, so NCCL
    # (one stream per group) runs them concurrently instead of in issue order. None: both on `ep`.
    restore: dist.ProcessGroup | None = None

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
