"""The planner's exact problem as a (mixed-integer) linear program, for `milp` and for LAER+'s min-max routing.

Notation: N devices, E experts, C slots per device; A[j, d] replicas of expert j on device d; S[i, j, d] tokens from
source i for expert j computed on d; z the busiest device's tokens.
    min  4 * sum_{i, j, d != i} S[i, j, d] * token_bytes / bw(i, d)  +  (3 or 4) * per_token_s * z
    s.t. sum_j A[j, d] = C,  sum_d A[j, d] >= 1,  sum_d S[i, j, d] = loads[i, j],
         S[i, j, d] <= loads[i, j] * A[j, d],  sum_{i, j} S[i, j, d] <= z
A is integer in [0, C] (a second copy on one device never helps, so this is the binary problem of the paper that
also admits the heuristics' layouts). Objective coefficients are in microseconds to keep HiGHS well scaled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from training.planner.objective import PlanObjective
from training.rounding import largest_remainder
from training.routing import traffic_summary

US = 1e6


@dataclass(frozen=True)
class LPResult:
    slots: np.ndarray | None  # [N, C] placement (None when no feasible point was found)
    routing: np.ndarray | None  # [N, E, N] int64
    objective_s: float  # objective of the returned point (inf when none)
    gap: float  # relative MIP gap reported by HiGHS (0 when proven optimal, inf when no point)
    status: int  # scipy.optimize.milp status (0 optimal, 1 limit reached)


def _comm_coef(n: int, g: int, cost: PlanObjective) -> np.ndarray:
    node = np.arange(n) // g
    per_token = np.where(node[:, None] == node[None, :], cost.token_bytes / cost.intra_bw, cost.token_bytes / cost.inter_bw)
    np.fill_diagonal(per_token, 0.0)
    return 4.0 * per_token * US  # [N, N] source -> device


def solve_placement(loads: np.ndarray, c: int, g: int, cost: PlanObjective, time_limit_s: float) -> LPResult:
    """The full MILP (placement and routing)."""
    n, e = loads.shape
    src, exp = np.nonzero(loads)  # (i, j) pairs with tokens
    p = src.size
    na, ns = e * n, p * n  # A[j, d] at j * N + d; S[(i, j), d] at n_a + pair * N + d; z last
    nv = na + ns + 1
    d_idx = np.tile(np.arange(n), p)
    pair = np.repeat(np.arange(p), n)
    cobj = np.zeros(nv)
    cobj[na:na + ns] = _comm_coef(n, g, cost)[src[pair], d_idx]
    cobj[-1] = cost.compute_factor * cost.per_token_s * US
    rows, cols, vals, lo, hi = [], [], [], [], []
    r0 = 0

    def add(r, cc, v, lower, upper):
        nonlocal r0
        rows.append(r + r0)
        cols.append(cc)
        vals.append(v)
        lo.append(lower)
        hi.append(upper)
        r0 += len(lower)

    jj, dd = np.divmod(np.arange(na), n)
    add(dd, np.arange(na), np.ones(na), np.full(n, c), np.full(n, c))  # C slots per device
    add(jj, np.arange(na), np.ones(na), np.ones(e), np.full(e, np.inf))  # every expert restored somewhere
    add(pair, na + np.arange(ns), np.ones(ns), loads[src, exp].astype(float), loads[src, exp].astype(float))
    # S - load * A <= 0, one row per S variable.
    rr = np.arange(ns)
    add(np.concatenate([rr, rr]), np.concatenate([na + rr, exp[pair] * n + d_idx]),
        np.concatenate([np.ones(ns), -loads[src, exp][pair].astype(float)]), np.full(ns, -np.inf), np.zeros(ns))
    add(np.concatenate([d_idx, np.arange(n)]), np.concatenate([na + rr, np.full(n, nv - 1)]),
        np.concatenate([np.ones(ns), -np.ones(n)]), np.full(n, -np.inf), np.zeros(n))
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r0, nv)).tocsr()
    ub = np.concatenate([np.full(na, c), np.repeat(loads[src, exp], n).astype(float), [np.inf]])
    integrality = np.concatenate([np.ones(na + ns), [0]])
    res = milp(cobj, constraints=LinearConstraint(a, np.concatenate(lo), np.concatenate(hi)),
               bounds=Bounds(np.zeros(nv), ub), integrality=integrality,
               options={"time_limit": float(time_limit_s), "disp": False})
    if res.x is None:
        return LPResult(None, None, float("inf"), float("inf"), int(res.status))
    x = np.rint(res.x)
    counts = x[:na].reshape(e, n).astype(np.int64)  # [E, N]
    slots = np.array([np.repeat(np.arange(e), counts[:, d]) for d in range(n)], dtype=np.int64)
    routing = np.zeros((n, e, n), dtype=np.int64)
    routing[src[pair], exp[pair], d_idx] = x[na:na + ns].astype(np.int64)
    gap = float(getattr(res, "mip_gap", 0.0) or 0.0) if res.status == 0 else float(getattr(res, "mip_gap", np.inf))
    return LPResult(slots, routing, cost.objective(*traffic_summary(routing, g)), gap, int(res.status))


def minmax_routing(loads: np.ndarray, holders: np.ndarray, g: int, cost: PlanObjective) -> np.ndarray | None:
    """Optimal routing [N, E, N] for a fixed placement (the LP above with A fixed), rounded to integers by largest
    remainder per (source, expert). holders: [E, N] replicas per device. None if the LP fails."""
    n, e = loads.shape
    src, exp = np.nonzero(loads)
    # Variables: one per (pair, holder device).
    hold = holders[exp] > 0  # [P, N]
    pair, dev = np.nonzero(hold)
    nvar = pair.size + 1
    cobj = np.concatenate([_comm_coef(n, g, cost)[src[pair], dev], [cost.compute_factor * cost.per_token_s * US]])
    p = src.size
    rows = np.concatenate([pair, p + dev, p + np.arange(n)])
    cols = np.concatenate([np.arange(pair.size), np.arange(pair.size), np.full(n, nvar - 1)])
    vals = np.concatenate([np.ones(pair.size), np.ones(pair.size), -np.ones(n)])
    a = coo_matrix((vals, (rows, cols)), shape=(p + n, nvar)).tocsr()
    lod = loads[src, exp].astype(float)
    lo = np.concatenate([lod, np.full(n, -np.inf)])
    hi = np.concatenate([lod, np.zeros(n)])
    res = milp(cobj, constraints=LinearConstraint(a, lo, hi), bounds=Bounds(0, np.inf), integrality=np.zeros(nvar))
    if res.x is None:
        return None
    shares = np.zeros((p, n))  # [P, N] tokens of each (source, expert) pair per device, 0 off its holders
    shares[pair, dev] = res.x[:-1]
    routing = np.zeros((n, e, n), dtype=np.int64)
    routing[src, exp] = largest_remainder(shares, lod)
    return routing
