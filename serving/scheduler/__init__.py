"""Two-level deployment scheduler (pure functions -> frozen DeploymentPlan)."""

from serving.scheduler.dispatch import Dispatch, max_served, solve_dispatch, solve_dispatch_flow
from serving.scheduler.plan import DeploymentPlan
from serving.scheduler.search import (
    Problem,
    SchedulerConfig,
    all_deployments,
    best_homogeneous,
    brute_force,
    homogeneous_candidates,
    oserve_search,
)

__all__ = [
    "Dispatch", "max_served", "solve_dispatch", "solve_dispatch_flow", "DeploymentPlan", "Problem",
    "SchedulerConfig", "all_deployments", "best_homogeneous", "brute_force", "homogeneous_candidates", "oserve_search",
]
