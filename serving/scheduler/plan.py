"""The scheduler's decision: a frozen DeploymentPlan."""

from __future__ import annotations

from dataclasses import dataclass

from serving.costmodel.iteration import ReplicaConfig


@dataclass(frozen=True)
class CandidateScore:
    """One deployment the search ranked: its flow/LP score and, for a finalist, its simulated replay score."""

    deployment: str  # DeploymentPlan.describe() of the candidate, e.g. "2xtp2pp1 + 3xtp4pp1"
    served_share: float  # LP: share of the planned rates it serves (1.0: all)
    peak_utilisation: float  # LP: its busiest replica's share of capacity under the balanced dispatch
    replay_score: float | None = None  # the scorer's value (lower is better); None: not a finalist
    chosen: bool = False  # the plan returned


@dataclass(frozen=True)
class DeploymentPlan:
    replicas: tuple[ReplicaConfig, ...]  # one entry per replica, its TP and PP degrees
    devices: tuple[tuple[int, ...], ...]  # [K] device ids of each replica (TP groups inside a node)
    dispatch: tuple[tuple[float, ...], ...]  # [K][J] x_kj: requests/s of type j routed to replica k
    type_rates: tuple[float, ...]  # [J] lambda_j the plan was made for
    served_rps: float  # sum of x: the rate the plan can serve (<= sum of lambda)
    peak_utilisation: float  # max over replicas of sum_j x_kj / n_kj
    utilisation: tuple[float, ...]  # [K] each replica's share of its capacity in use
    policy: str  # which planner made it ("oserve", "homogeneous", "brute_force", ...)
    steps: int = 0  # upper-level search steps taken (0 for one-shot planners)
    evaluations: int = 0  # deployments whose dispatch was solved
    solve_time_s: float = 0.0  # wall-clock seconds the planner took
    candidates: tuple[CandidateScore, ...] = ()  # what the search ranked, best LP score first (for inspection)

    @property
    def num_gpus(self) -> int:
        return sum(r.gpus for r in self.replicas)

    def describe(self) -> str:
        from collections import Counter

        c = Counter(str(r) for r in self.replicas)
        return " + ".join(f"{v}x{k}" for k, v in sorted(c.items()))
