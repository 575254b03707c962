"""Two-level deployment scheduler (pure functions -> frozen DeploymentPlan). Imports the cost model and the workload
only: a capacity profiler that needs the simulator is passed in (Problem.profiler)."""

from serving.scheduler.config import Capacity, SchedulerConfig
from serving.scheduler.dispatch import Dispatch, TieBreak, max_served, solve_dispatch
from serving.scheduler.plan import CandidateScore, DeploymentPlan
from serving.scheduler.search import (
    CapacityProfiler,
    PlanScorer,
    Problem,
    all_deployments,
    best_homogeneous,
    brute_force,
    homogeneous_candidates,
    oserve_search,
)

__all__ = [
    "Capacity", "SchedulerConfig", "Dispatch", "TieBreak", "max_served", "solve_dispatch", "DeploymentPlan",
    "CandidateScore", "CapacityProfiler", "PlanScorer", "Problem", "all_deployments", "best_homogeneous",
    "brute_force", "homogeneous_candidates", "oserve_search",
]
