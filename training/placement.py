"""Expert layouts: which expert each slot restores. Pure numpy: the planner, the runtime and the simulator share it
(the token-routing rule over a layout is `training.routing`).

Notation: N devices, E experts, C expert slots per device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def holder_counts(slots: np.ndarray, num_experts: int) -> np.ndarray:
    """[E, N] int64 replicas of expert j on device d for slots [N, C] (ids assumed in [0, E): no validation, as the
    planners call it per candidate layout; bincount, as np.add.at is slow on small arrays)."""
    slots = np.asarray(slots)
    n = slots.shape[0]
    return np.bincount((slots * n + np.arange(n)[:, None]).ravel(), minlength=num_experts * n).reshape(num_experts, n)


@dataclass(frozen=True)
class Placement:
    """Which expert each slot restores. Replicas are allowed, two on one device too."""

    slots: np.ndarray  # [N, C] int, expert id held by slot c of device d
    num_experts: int  # E; every id in slots is in [0, E)

    def __post_init__(self):
        s = np.array(self.slots)
        if s.ndim != 2 or s.shape[0] < 1 or s.shape[1] < 1:
            raise ValueError(f"Placement.slots must be a non-empty [N, C] array, got shape {s.shape}")
        if not np.issubdtype(s.dtype, np.integer):
            if not np.all(np.equal(np.mod(s, 1), 0)):
                raise ValueError("Placement.slots must hold integer expert ids")
        s = s.astype(np.int64)
        if self.num_experts < 1:
            raise ValueError(f"Placement.num_experts must be >= 1, got {self.num_experts}")
        bad = (s < 0) | (s >= self.num_experts)
        if bad.any():
            d, c = np.argwhere(bad)[0]
            raise ValueError(f"Placement: slot [{d}, {c}] holds expert {s[d, c]}, outside [0, {self.num_experts})")
        s.setflags(write=False)
        object.__setattr__(self, "slots", s)

    @property
    def num_devices(self) -> int:
        return self.slots.shape[0]

    @property
    def slots_per_device(self) -> int:
        return self.slots.shape[1]

    def replica_counts(self) -> np.ndarray:
        """[E] number of slots holding each expert."""
        return np.bincount(self.slots.ravel(), minlength=self.num_experts)

    def holders(self) -> np.ndarray:
        """[E, N] number of replicas of expert j on device d."""
        return holder_counts(self.slots, self.num_experts)

    def expert_slots(self, expert: int) -> list[tuple[int, int]]:
        """(device, slot) pairs holding `expert`, device-major."""
        return [tuple(x) for x in np.argwhere(self.slots == expert)]

    def require_all_experts(self) -> None:
        missing = np.flatnonzero(self.replica_counts() == 0)
        if missing.size:
            raise ValueError(f"Placement leaves experts {missing.tolist()} without a replica")


def static_ep_placement(num_devices: int, num_experts: int) -> Placement:
    """Plain expert parallel: device d holds experts d*E/N .. (d+1)*E/N - 1."""
    if num_experts % num_devices:
        raise ValueError(f"static EP needs E divisible by N, got E={num_experts}, N={num_devices}")
    return Placement(np.arange(num_experts).reshape(num_devices, -1), num_experts)


def fsdp_ep_placement(num_devices: int, num_experts: int, slots_per_device: int) -> Placement:
    """The LAER-MoE paper's static FSDP+EP layout: device d holds experts {i*(E/C) + d mod (E/C)}, i < C."""
    if num_experts % slots_per_device:
        raise ValueError(f"FSDP+EP needs E divisible by C, got E={num_experts}, C={slots_per_device}")
    group = num_experts // slots_per_device
    d = np.arange(num_devices)[:, None]
    i = np.arange(slots_per_device)[None, :]
    return Placement(i * group + d % group, num_experts)
