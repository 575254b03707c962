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

    @property
    def size(self) -> int:
        return dist.get_world_size(self.ep)

    @property
    def rank(self) -> int:
        return dist.get_rank(self.ep)
