"""Global dispatchers: where each arriving request goes. A new rule is a short `Router` subclass, one `Dispatcher`
member and one `ROUTERS` line; the simulator does not change.

Static routers see only the request types (they fix every route when made), so the simulator advances only the target
replica; a router with `reads_state` looks at the replicas at the arrival, so the simulator first advances them all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum
from typing import ClassVar

import numpy as np


class Dispatcher(Enum):
    """The registered dispatch rules. Member names are lower case because OmegaConf matches a config value to the
    member's name."""

    plan = "plan"  # the scheduler's x_kj shares per type, split by a fixed sequence (needs the plan's weights)
    # Type affinity from the plan (replicas with x_kj > 0 may serve type j), then the fewest outstanding tokens among
    # them at the arrival (join-shortest-queue in tokens); needs the plan's weights
    affinity = "affinity"
    round_robin = "round_robin"  # replica i mod K, blind to types and load
    least_outstanding = "least_outstanding"  # fewest dispatched-but-unfinished requests at the arrival


class Router(ABC):
    """Made once per simulation with every request's type; `route(i, engines)` names the replica for arrival i."""

    reads_state: ClassVar[bool] = False  # True: route() reads the engines, which must be advanced to the arrival

    def __init__(self, labels: np.ndarray, num_replicas: int, weights: np.ndarray | None):
        """labels: [R] type per request; weights: [K, J] x_kj (only the plan router uses them)."""
        self.num_replicas = num_replicas

    @abstractmethod
    def route(self, i: int, engines) -> int: ...


class PlanWeighted(Router):
    """Type j goes to replica k in proportion to x_kj, deterministically: the i-th request of type j takes the point
    frac(i * phi) of a low-discrepancy (Weyl) sequence and goes to the replica whose share of [0, 1) holds it, so every
    window of requests splits close to the x_kj shares. Types the plan does not serve spread evenly."""

    def __init__(self, labels, num_replicas, weights):
        super().__init__(labels, num_replicas, weights)
        self.routes = plan_weighted(np.asarray(labels), plan_weights(weights, num_replicas, "plan"))

    def route(self, i, engines):
        return int(self.routes[i])


def plan_weights(weights, num_replicas: int, dispatcher: str) -> np.ndarray:
    """The plan's x_kj [K, J] as floats, or a ValueError when a dispatcher that follows the plan is not given them."""
    if weights is None:
        raise ValueError(f"simulate: dispatcher {dispatcher} needs the plan's x_kj weights")
    w = np.asarray(weights, float)
    if w.shape[0] != num_replicas:
        raise ValueError(f"simulate: weights have {w.shape[0]} rows for {num_replicas} replicas")
    return w


def plan_weighted(labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[R] replica per request for PlanWeighted; labels [R], weights [K, J] x_kj."""
    K, J = weights.shape
    w = np.where(weights.sum(0, keepdims=True) > 0, weights, 1.0)  # [K, J]
    bounds = np.cumsum(w / w.sum(0, keepdims=True), axis=0)  # [K, J] upper end of each replica's share
    golden = (np.sqrt(5.0) - 1) / 2
    routes = np.empty(len(labels), np.int64)
    for j in range(J):
        idx = np.flatnonzero(labels == j)
        points = np.mod(np.arange(idx.size) * golden + 0.5, 1.0)
        routes[idx] = np.minimum(np.searchsorted(bounds[:, j], points, side="right"), K - 1)
    return routes


class RoundRobin(Router):
    def route(self, i, engines):
        return i % self.num_replicas


class LeastOutstanding(Router):
    """The replica with the fewest dispatched-but-unfinished requests (lowest index on ties)."""

    reads_state = True

    def route(self, i, engines):
        return int(np.argmin([e.outstanding for e in engines]))


class Affinity(Router):
    """Type j may go to the replicas the plan gives a share of it (x_kj above `min_share` of the type's total); among
    those, the one with the fewest dispatched-but-unfinished prompt + output tokens (lowest index on ties). A type
    the plan does not serve may go anywhere."""

    reads_state = True
    min_share = 0.01  # shares below this fraction of a type's rate are LP noise, not a route

    def __init__(self, labels, num_replicas, weights):
        super().__init__(labels, num_replicas, weights)
        w = plan_weights(weights, num_replicas, "affinity")
        total = w.sum(0, keepdims=True)
        allowed = w > self.min_share * total  # [K, J]
        allowed[:, total[0] <= 0] = True
        self.labels = np.asarray(labels)
        self.allowed = [np.flatnonzero(allowed[:, j]) for j in range(w.shape[1])]

    def route(self, i, engines):
        j = int(self.labels[i])
        cand = self.allowed[j] if j < len(self.allowed) else np.arange(self.num_replicas)
        return int(cand[int(np.argmin([engines[k].outstanding_tokens for k in cand]))])


ROUTERS: dict[Dispatcher, type[Router]] = {
    Dispatcher.plan: PlanWeighted,
    Dispatcher.round_robin: RoundRobin,
    Dispatcher.least_outstanding: LeastOutstanding,
    Dispatcher.affinity: Affinity,
}
