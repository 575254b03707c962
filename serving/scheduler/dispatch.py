"""Lower level: dispatch rates x[k, j] of request type j to replica (class) k.

Notation: K replica classes (identical replicas grouped; c[k] replicas in class k), J types,
n[k, j] requests/s one replica of class k sustains on type j alone, lam[j] arrival rate, l[k, j] latency.
  LP:   max sum x   s.t.  sum_k x[k, j] <= lam[j],  sum_j x[k, j] / n[k, j] <= c[k],  x >= 0
Ties (many x serve the same rate) are broken in two more solves:
  2. the least peak utilisation u* = max_k sum_j x[k, j] / (n[k, j] c[k]) that still serves the optimum,
  3. the least latency-weighted rate sum l x, with every class kept under max(u*, headroom) utilisation, so that
     fast replicas take more work but are not driven into queueing.
The paper states it as a flow on s -> type j -> replica k -> t with gains; tests/serving/flow_reference.py solves
that formulation and checks this LP against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

_TOL = 1e-9


class TieBreak(Enum):
    """How the dispatch is chosen among the solutions that serve the optimum rate (steps above). Member names are
    lower case because OmegaConf matches a config value to the member's name."""

    none = "none"  # step 1 only: whatever HiGHS returns
    balance = "balance"  # + step 2: least peak utilisation
    latency = "latency"  # + steps 2 and 3: least latency-weighted rate under the utilisation ceiling


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
    # Imported at the first solve: the experiments' config schema imports this package for SchedulerConfig, and
    # building a config (every `loadwise` call) should not pay for loading scipy.optimize (~0.35 s).
    from scipy.optimize import linprog

    res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(f"dispatch {what}: HiGHS failed: {res.message}")
    return res


def max_served(n, lam, counts=None) -> float:
    """Step 1 only: the most requests/s the replicas can serve."""
    return solve_dispatch(n, lam, counts=counts, tie_break=TieBreak.none).served_rps


def solve_dispatch(n, lam, latency=None, counts=None, headroom: float = 0.8,
                   tie_break: TieBreak = TieBreak.latency) -> Dispatch:
    """x maximising the served rate, ties broken as `tie_break` says (steps 1-3 above)."""
    if not isinstance(tie_break, TieBreak):
        raise ValueError(f"dispatch: tie_break {tie_break!r} is not a TieBreak; use one of {[t.name for t in TieBreak]}")
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

    if tie_break is not TieBreak.none and served > _TOL:
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
        if tie_break is TieBreak.latency:
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
