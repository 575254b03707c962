"""Static layouts: plain expert parallel and the LAER-MoE paper's FSDP+EP layout (no replication decision)."""

from __future__ import annotations

import numpy as np

from training.placement import fsdp_ep_placement, static_ep_placement
from training.planner.base import Plan, Planner


class StaticEP(Planner):
    """E/N experts per device, no replicas (needs C = E / N)."""

    name = "static_ep"

    def _plan(self, loads: np.ndarray) -> Plan:
        e = loads.shape[1]
        if self.n * self.c != e:
            raise ValueError(f"static_ep needs C = E/N: N={self.n}, C={self.c}, E={e}")
        return self.fsep_plan(loads, static_ep_placement(self.n, e).slots)


class FsdpEP(Planner):
    """Device d holds experts {i*(E/C) + d mod (E/C)}, i < C."""

    name = "fsdp_ep"

    def _plan(self, loads: np.ndarray) -> Plan:
        return self.fsep_plan(loads, fsdp_ep_placement(self.n, loads.shape[1], self.c).slots)
