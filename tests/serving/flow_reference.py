"""The paper's flow formulation of the lower-level dispatch, the reference serving/scheduler/dispatch.py's LP is checked
against (tests only: the scheduler solves the LP).

Network s -> type j -> replica class k -> t: arc s -> j carries at most lam[j] requests/s, arc j -> k turns requests/s
into replica-time at gain 1 / n[k, j], arc k -> t carries at most c[k] replicas' time. Max flow out of s.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog

from serving.scheduler import Dispatch


def solve_dispatch_flow(n, lam, counts=None) -> Dispatch:
    """Max flow on the network above.

    Variables: f_sj [J], f_jk [J*K] (requests/s), g_kt [K] (replica-seconds/s); conservation holds at every inner node.
    """
    n = np.asarray(n, float)
    lam = np.asarray(lam, float)
    counts = np.ones(n.shape[0]) if counts is None else np.asarray(counts, float)
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
