"""Lower level: dispatch rates x[k, j] of request type j to replica (class) k.

Notation: K replica classes (identical replicas grouped; c[k] replicas in class k), J types,
n[k, j] requests/s one replica of class k sustains on type j alone, lam[j] arrival rate, l[k, j] latency.
  LP:   max sum x   s.t.  sum_k x[k, j] <= lam[j],  sum_j x[k, j] / n[k, j] <= c[k],  x >= 0
Ties (many x serve the same rate) are broken in two more solves:
  2. the least peak utilisation u* = max_k sum_j x[k, j] / (n[k, j] c[k]) that still serves the optimum,
  3. the least latency-weighted rate sum l x, with every class kept under max(u*, headroom) utilisation, so that
     fast replicas take more work but are not driven into queueing.
The flow formulation (the paper's) is the same problem on a network s -> type j -> replica k -> t with gains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog

_TOL = 1e-9


@dataclass(frozen=True)
class Dispatch:
    x: np.ndarray  # [K, J] requests/s of type j sent to class k (summed over the class's replicas)
    served_rps: float  # sum of x
    peak_utilisation: float  # max_k of utilisation
    utilisation: np.ndarray  # [K] share of a class's capacity in use, 0..1


def _check(n, lam, counts):
    n = np.asarray(n, float)
    lam = np.asarray(lam, float)
    counts = np.ones(n.shape[0]) if counts is None else np.asarray(counts, float)
    if n.ndim != 2 or lam.shape != (n.shape[1],) or counts.shape != (n.shape[0],):
        raise ValueError(f"dispatch: shapes n {n.shape}, lam {lam.shape}, counts {counts.shape} do not agree")
    if np.any(n < 0) or np.any(lam < 0) or np.any(counts < 0):
        raise ValueError("dispatch: capacities, rates and counts must be non-negative")
    return n, lam, counts


def _capacity_rows(n: np.ndarray) -> np.ndarray:
    """[K, K*J] rows of sum_j x[k, j] / n[k, j]; a type a class cannot serve gets a zero column (bounded to 0)."""
    K, J = n.shape
    inv = np.where(n > 0, 1.0 / np.where(n > 0, n, 1.0), 0.0)
    rows = np.zeros((K, K * J))
    for k in range(K):
        rows[k, k * J:(k + 1) * J] = inv[k]
    return rows


def _solve(c, A_ub, b_ub, bounds, what):
    res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(f"dispatch {what}: HiGHS failed: {res.message}")
    return res


def max_served(n, lam, counts=None) -> float:
    """Step 1 only: the most requests/s the replicas can serve."""
    return solve_dispatch(n, lam, counts=counts, tie_break="none").served_rps


def solve_dispatch(n, lam, latency=None, counts=None, headroom: float = 0.8, tie_break: str = "latency") -> Dispatch:
    """x maximising the served rate; tie_break "none" (step 1), "balance" (+ step 2) or "latency" (+ steps 2, 3)."""
    n, lam, counts = _check(n, lam, counts)
    K, J = n.shape
    cap = _capacity_rows(n)
    type_rows = np.tile(np.eye(J), (1, K))  # [J, K*J]: sum_k x[k, j]
    bounds = [(0, None) if n[k, j] > 0 and counts[k] > 0 else (0, 0) for k in range(K) for j in range(J)]

    # Step 1: max served.
    A = np.vstack([type_rows, cap])
    b = np.concatenate([lam, counts])
    r1 = _solve(-np.ones(K * J), A, b, bounds, "max served")
    served = -r1.fun
    x = r1.x
    floor = served * (1 - 1e-7) - _TOL

    if tie_break in ("balance", "latency") and served > _TOL:
        # Step 2: min u with cap_k(x) <= c_k u, variables [x, u].
        A2 = np.vstack([
            np.hstack([type_rows, np.zeros((J, 1))]),
            np.hstack([cap, -counts[:, None]]),
            np.hstack([-np.ones((1, K * J)), np.zeros((1, 1))]),
        ])
        b2 = np.concatenate([lam, np.zeros(K), [-floor]])
        c2 = np.zeros(K * J + 1)
        c2[-1] = 1.0
        r2 = _solve(c2, A2, b2, bounds + [(0, None)], "balance")
        u_star = float(r2.x[-1])
        x = r2.x[:-1]
        if tie_break == "latency":
            # Step 3: least latency under the utilisation ceiling.
            lat = np.ones((K, J)) if latency is None else np.asarray(latency, float)
            ceiling = max(u_star * (1 + 1e-7), headroom)
            A3 = np.vstack([type_rows, cap, -np.ones((1, K * J))])
            b3 = np.concatenate([lam, counts * ceiling, [-floor]])
            r3 = _solve(lat.ravel(), A3, b3, bounds, "latency tie-break")
            x = r3.x
    x = np.maximum(x.reshape(K, J), 0.0)
    util = np.where(counts > 0, (x * np.where(n > 0, 1 / np.where(n > 0, n, 1), 0)).sum(1) / np.maximum(counts, 1e-12), 0)
    return Dispatch(x, float(x.sum()), float(util.max(initial=0.0)), util)


def solve_dispatch_flow(n, lam, counts=None) -> Dispatch:
    """The flow formulation: max flow out of s on s -> j -> k -> t, where arc j -> k turns requests/s into
    replica-time at gain 1 / n[k, j] and arc k -> t carries at most c[k] replicas' time.

    Variables: f_sj [J], f_jk [J*K] (requests/s), g_kt [K] (replica-seconds/s); conservation holds at every inner node.
    """
    n, lam, counts = _check(n, lam, counts)
    K, J = n.shape
    nv = J + J * K + K
    fsj = lambda j: j  # noqa: E731
    fjk = lambda j, k: J + j * K + k  # noqa: E731
    gkt = lambda k: J + J * K + k  # noqa: E731
    A_eq, b_eq = [], []
    for j in range(J):  # into j == out of j
        row = np.zeros(nv)
        row[fsj(j)] = 1
        for k in range(K):
            row[fjk(j, k)] = -1
        A_eq.append(row)
        b_eq.append(0.0)
    for k in range(K):  # gain-adjusted inflow into k == outflow to t
        row = np.zeros(nv)
        for j in range(J):
            if n[k, j] > 0:
                row[fjk(j, k)] = 1 / n[k, j]
        row[gkt(k)] = -1
        A_eq.append(row)
        b_eq.append(0.0)
    bounds = ([(0, lam[j]) for j in range(J)]
              + [(0, None) if n[k, j] > 0 else (0, 0) for j in range(J) for k in range(K)]
              + [(0, counts[k]) for k in range(K)])
    c = np.zeros(nv)
    c[:J] = -1
    res = linprog(c, A_eq=np.array(A_eq), b_eq=np.array(b_eq), bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(f"dispatch flow: HiGHS failed: {res.message}")
    x = np.maximum(res.x[J:J + J * K].reshape(J, K).T, 0.0)
    util = res.x[J + J * K:] / np.maximum(counts, 1e-12)
    return Dispatch(x, float(-res.fun), float(util.max(initial=0.0)), util)
