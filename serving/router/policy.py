"""Where a request goes: the plan's type affinity, then join-the-shortest-queue among that type's replicas (pure).

Notation: K replicas, J request types; x_kj the plan's rate of type j on replica k, share_kj = x_kj / sum_k x_kj.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from serving.scheduler.plan import DeploymentPlan


@dataclass(frozen=True)
class RoutingTable:
    replicas: tuple[str, ...]  # [K] replica names, in the plan's order
    share: tuple[tuple[float, ...], ...]  # [J][K] share_kj; a type the plan sends nowhere: equal over all K

    @property
    def num_types(self) -> int:
        return len(self.share)

    def targets(self, j: int) -> tuple[int, ...]:
        """Replicas the plan sends type j to."""
        return tuple(k for k, s in enumerate(self.share[j]) if s > 0)


def table_from_plan(plan: DeploymentPlan, names: Sequence[str]) -> RoutingTable:
    """The routing table of `plan`, its K replicas called `names`."""
    k_n = len(plan.replicas)
    if len(names) != k_n:
        raise ValueError(f"plan has {k_n} replicas but {len(names)} names were given")
    j_n = len(plan.type_rates) if plan.type_rates else (len(plan.dispatch[0]) if plan.dispatch else 0)
    share = []
    for j in range(j_n):
        col = [float(plan.dispatch[k][j]) if j < len(plan.dispatch[k]) else 0.0 for k in range(k_n)]
        tot = sum(col)
        share.append(tuple(c / tot for c in col) if tot > 0 else tuple(1.0 / k_n for _ in range(k_n)))
    return RoutingTable(tuple(names), tuple(share))


def choose(table: RoutingTable, j: int, queue: Sequence[int], alive: Sequence[bool]) -> int | None:
    """Replica index for one request of type j, or None when no replica is alive.

    1. Candidates: type j's replicas that are alive; if none is (all failed), every live replica, so that a failure
       reroutes rather than drops.
    2. The shortest queue (requests the router has open on it) wins; a tie goes to the larger share_kj, then the
       lower index.
    """
    cand = [k for k in table.targets(j) if alive[k]] or [k for k in range(len(table.replicas)) if alive[k]]
    if not cand:
        return None
    return min(cand, key=lambda k: (queue[k], -table.share[j][k], k))
