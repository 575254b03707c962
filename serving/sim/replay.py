"""A plan scorer for the scheduler's finalists: replay the busiest short window of the workload in the simulator.

`ReplayScorer` is the scheduler's PlanScorer (serving.scheduler.Problem.scorer), as DistServe's and Vidur's capacity
searches score candidates by simulation: the scheduler calls it and never imports this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from serving.costmodel.iteration import IterationCost, ReplicaConfig
from serving.sim.dispatcher import Dispatcher
from serving.sim.metrics import SLO
from serving.sim.replica import EngineConfig
from serving.sim.simulator import simulate


class ReplayObjective(Enum):
    """What a replay minimises. Lower-case names: OmegaConf matches a config value to the member's name."""

    p99 = "p99"  # P99 end-to-end latency, seconds
    goodput = "goodput"  # minus the share of requests meeting the SLO (ties: P99)


def busiest_window(arrival_s: np.ndarray, window_s: float) -> slice:
    """Indices of the `window_s` seconds holding the most arrivals (the whole trace when it is shorter)."""
    a = np.asarray(arrival_s, float)
    if len(a) == 0 or a[-1] - a[0] <= window_s:
        return slice(0, len(a))
    end = np.searchsorted(a, a + window_s, side="left")  # [R] first arrival past each start's window
    i = int(np.argmax(end - np.arange(len(a))))
    return slice(i, int(end[i]))


@dataclass(frozen=True)
class ReplayScorer:
    arrival_s: np.ndarray  # [R] the workload's arrivals, sorted
    input_tokens: np.ndarray  # [R]
    output_tokens: np.ndarray  # [R]
    labels: np.ndarray  # [R] request type of each
    cost: Callable[[ReplicaConfig], IterationCost]  # the cost model's per-config costs (CostModel.cost)
    window_s: float = 120.0  # seconds replayed: the busiest window, where the plans differ most
    objective: ReplayObjective = ReplayObjective.p99
    dispatch: Dispatcher = Dispatcher.affinity  # how the replay routes (the plan's x_kj as weights)
    slo: SLO = field(default_factory=SLO)
    engine: EngineConfig = field(default_factory=EngineConfig)
    max_model_len: int = 8192

    def __call__(self, plan) -> float:
        w = busiest_window(self.arrival_s, self.window_s)
        arr = self.arrival_s[w]
        res = simulate(arr - arr[0], self.input_tokens[w], self.output_tokens[w], self.labels[w],
                       [self.cost(c) for c in plan.replicas], self.dispatch, weights=np.array(plan.dispatch),
                       engine=self.engine, max_model_len=self.max_model_len, slo=self.slo)
        p99 = res.summary["p99_latency_s"]
        if self.objective is ReplayObjective.goodput:
            return -res.summary["slo_attainment"] + 1e-6 * p99
        return p99
