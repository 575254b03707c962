"""Which replicas a plan change keeps, starts and stops (pure)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from serving.scheduler.plan import DeploymentPlan


@dataclass(frozen=True)
class SwitchSteps:
    keep: tuple[tuple[int, int], ...]  # (old k, new k): the same replica serves on, under the new plan's dispatch
    start: tuple[int, ...]  # new k with no old replica to keep
    stop: tuple[int, ...]  # old k the new plan has no place for


def diff_plans(old: DeploymentPlan | None, new: DeploymentPlan) -> SwitchSteps:
    """Keep an old replica where the new plan has one of the same TP/PP on the same devices (a running engine costs
    nothing to keep; a new one costs a load); start the rest, stop what is left over. Matches go in plan order."""
    if old is None:
        return SwitchSteps((), tuple(range(len(new.replicas))), ())
    free = defaultdict(list)
    for k, key in enumerate(zip(old.replicas, old.devices)):
        free[key].append(k)
    keep, start = [], []
    for k, key in enumerate(zip(new.replicas, new.devices)):
        if free[key]:
            keep.append((free[key].pop(0), k))
        else:
            start.append(k)
    kept = {o for o, _ in keep}
    return SwitchSteps(tuple(keep), tuple(start), tuple(k for k in range(len(old.replicas)) if k not in kept))
