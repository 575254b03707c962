"""Global dispatchers: where each arriving request goes. A new rule is one function plus one DISPATCHERS entry.

Static rules see only the request's type and return every route up front; dynamic rules look at the replicas' state
at the arrival (the simulator advances all replicas to that moment first).
"""

from __future__ import annotations

import numpy as np


def plan_weighted(labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Route type j to replica k in proportion to x_kj, deterministically: the i-th request of type j takes the point
    frac(i * phi) of a low-discrepancy (Weyl) sequence and goes to the replica whose share of [0, 1) holds it, so every
    window of requests splits close to the x_kj shares. Types the plan does not serve spread evenly.

    labels: [R] type per request; weights: [K, J] x_kj. Returns [R] replica index.
    """
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


def round_robin(labels: np.ndarray, num_replicas: int) -> np.ndarray:
    return np.arange(len(labels), dtype=np.int64) % num_replicas


def least_outstanding(engines) -> int:
    """Dynamic: the replica with the fewest dispatched-but-unfinished requests (lowest index on ties)."""
    return int(np.argmin([e.outstanding for e in engines]))


STATIC = {"plan": "plan_weighted", "round_robin": "round_robin"}
DYNAMIC = {"least_outstanding": least_outstanding}
DISPATCHERS = tuple(STATIC) + tuple(DYNAMIC)
