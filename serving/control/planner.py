"""The spatial scheduler on a forecast: per-interval plans, and the deployment in place re-dispatched.

Capacities n_kj and latencies l_kj depend on a replica's config and the types' mean lengths only, not on the rates,
so one cache serves every interval's problem.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from serving.control.config import PlannerKind
from serving.costmodel import CostModel, ReplicaConfig
from serving.scheduler import DeploymentPlan, Problem, SchedulerConfig, best_homogeneous, oserve_search


@dataclass
class ForecastPlanner:
    cost: CostModel
    mean_input: np.ndarray  # [J] tokens per type (fixed: the types are length clusters)
    mean_output: np.ndarray  # [J]
    num_gpus: int
    kind: PlannerKind = PlannerKind.oserve
    cfg: SchedulerConfig = field(default_factory=SchedulerConfig)
    _rates: dict = field(default_factory=dict)  # shared n_kj cache, keyed by ReplicaConfig
    _lat: dict = field(default_factory=dict)

    def problem(self, rates) -> Problem:
        lam = np.maximum(np.asarray(rates, float), 0.0)
        return Problem(self.cost, lam, np.asarray(self.mean_input, float), np.asarray(self.mean_output, float),
                       self.cfg, _rates=self._rates, _lat=self._lat)

    def plan(self, rates) -> DeploymentPlan:
        """The scheduler's deployment for these rates (the LP's best; no replay: a forecast has no trace)."""
        prob = self.problem(rates)
        if self.kind is PlannerKind.homogeneous:
            return prob.plan(best_homogeneous(prob, self.num_gpus), "homogeneous")
        return oserve_search(prob, self.num_gpus)

    def redispatch(self, plan: DeploymentPlan, rates) -> DeploymentPlan:
        """The same replicas on the same devices, the dispatch solved for these rates (costs nothing to apply)."""
        fresh = self.problem(rates).plan(tuple(sorted(plan.replicas, key=lambda c: (c.gpus, c.tp, c.pp))), plan.policy)
        row = {c: (d, u) for c, d, u in zip(fresh.replicas, fresh.dispatch, fresh.utilisation)}
        return dataclasses.replace(
            plan, dispatch=tuple(row[c][0] for c in plan.replicas), utilisation=tuple(row[c][1] for c in plan.replicas),
            type_rates=fresh.type_rates, served_rps=fresh.served_rps, peak_utilisation=fresh.peak_utilisation)

    def capacity(self, config: ReplicaConfig) -> tuple[np.ndarray, np.ndarray]:
        """(n_kj [J] requests/s one replica sustains per type, l_kj [J] its latency, s)."""
        return self.problem(np.ones(len(self.mean_input))).capacity(config)
