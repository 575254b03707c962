"""Upper level: which replicas (GPU count, TP, PP) to run, scored by the lower-level dispatch.

Notation: N GPUs, a deployment is a multiset of ReplicaConfigs (GPU counts powers of two, so replicas pack into nodes
without fragmentation); its score is (served requests/s, -peak utilisation), compared lexicographically.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from serving.costmodel import CostModel, IterationCost, ReplicaConfig, type_capacity
from serving.scheduler.config import Capacity, SchedulerConfig
from serving.scheduler.dispatch import TieBreak, solve_dispatch
from serving.scheduler.plan import CandidateScore, DeploymentPlan
from serving.workload import Workload

Deployment = tuple  # sorted tuple of ReplicaConfig


# (cost of one replica, the type's input tokens [R_j], its output tokens [R_j], the analytic n_kj) -> n_kj, requests/s.
CapacityProfiler = Callable[[IterationCost, np.ndarray, np.ndarray, float], float]
# A candidate plan -> its score, lower is better (e.g. P99 latency or minus SLO goodput on a short simulated replay).
PlanScorer = Callable[[DeploymentPlan], float]


@dataclass
class Problem:
    """Capacities n[config] and latencies l[config] for one workload on one cost model (computed once, cached)."""

    cost: CostModel
    lam: np.ndarray  # [J]
    mean_in: np.ndarray  # [J]
    mean_out: np.ndarray  # [J]
    cfg: SchedulerConfig = field(default_factory=SchedulerConfig)
    _rates: dict = field(default_factory=dict)
    _lat: dict = field(default_factory=dict)
    _scores: dict = field(default_factory=dict)
    evaluations: int = 0

    samples: list | None = None  # [J] (input, output) token arrays per type, for capacity simulated
    # Measures n_kj for capacity simulated (passed in: the scheduler never runs the simulator itself).
    profiler: CapacityProfiler | None = None
    # Ranks the LP's finalists (passed in for the same reason); None: the LP's best is the plan.
    scorer: PlanScorer | None = None

    @classmethod
    def from_workload(cls, cost: CostModel, wl: Workload, cfg: SchedulerConfig | None = None,
                      profiler: CapacityProfiler | None = None, scorer: PlanScorer | None = None) -> Problem:
        samples = [(wl.trace.input_tokens[wl.labels == j], wl.trace.output_tokens[wl.labels == j])
                   for j in range(wl.num_types)]
        return cls(cost, np.asarray(wl.rates, float), wl.mean_input, wl.mean_output,
                   SchedulerConfig() if cfg is None else cfg, samples=samples, profiler=profiler, scorer=scorer)

    def capacity(self, c: ReplicaConfig) -> tuple[np.ndarray, np.ndarray]:
        if c not in self._rates:
            caps = [type_capacity(self.cost.cost(c), i, o, self.cfg.max_batched_tokens, self.cfg.tpot_target_s)
                    for i, o in zip(self.mean_in, self.mean_out)]
            self._rates[c] = np.array([t.rate_rps for t in caps])
            self._lat[c] = np.array([t.latency_s for t in caps])
            if not isinstance(self.cfg.capacity, Capacity):
                raise ValueError(f"SchedulerConfig.capacity: {self.cfg.capacity!r} is not a Capacity; use one of "
                                 f"{[k.name for k in Capacity]}")
            if (self.profiler is not None) != (self.cfg.capacity is Capacity.simulated):
                raise ValueError(f"scheduler capacity {self.cfg.capacity.name} "
                                 + ("needs a capacity profiler (Problem.profiler, e.g. serving.sim.profile."
                                    "SimulatedProfiler)" if self.profiler is None else "takes no capacity profiler"))
            if self.profiler is not None:
                if self.samples is None:
                    raise ValueError("capacity simulated needs the workload's per-type samples (Problem.from_workload)")
                self._rates[c] = np.array([self.profiler(self.cost.cost(c), inp, out, guess)
                                           for (inp, out), guess in zip(self.samples, self._rates[c])])
        return self._rates[c], self._lat[c]

    def _classes(self, dep: Deployment):
        counts = Counter(dep)
        keys = sorted(counts, key=lambda c: (c.gpus, c.tp))
        n = np.array([self.capacity(c)[0] for c in keys])
        lat = np.array([self.capacity(c)[1] for c in keys])
        return keys, np.array([counts[c] for c in keys], float), n, lat

    def score(self, dep: Deployment) -> tuple[float, float]:
        """(served rps, -peak utilisation), memoised; rates within 1e-6 relative count as equal."""
        if dep not in self._scores:
            self.evaluations += 1
            if not dep:
                self._scores[dep] = (0.0, 0.0)
            else:
                _, counts, n, _ = self._classes(dep)
                d = solve_dispatch(n, self.lam, counts=counts, tie_break=TieBreak.balance)
                self._scores[dep] = (round(d.served_rps / max(self.lam.sum(), 1e-12), 6), -d.peak_utilisation)
        return self._scores[dep]

    def plan(self, dep: Deployment, policy: str, steps: int = 0, t0: float | None = None) -> DeploymentPlan:
        """Expand a deployment into per-replica rows with the latency-tie-broken dispatch and device ids."""
        keys, counts, n, lat = self._classes(dep)
        d = solve_dispatch(n, self.lam, latency=lat, counts=counts, headroom=self.cfg.headroom,
                           tie_break=self.cfg.tie_break)
        replicas, rows, util = [], [], []
        for k, c in enumerate(keys):
            for _ in range(int(counts[k])):
                replicas.append(c)
                rows.append(tuple(float(v) for v in d.x[k] / counts[k]))
                util.append(float(d.utilisation[k]))
        order = sorted(range(len(replicas)), key=lambda i: -replicas[i].gpus)
        devices, nxt = [], 0
        for i in order:  # largest first: power-of-two blocks stay aligned to nodes
            devices.append(tuple(range(nxt, nxt + replicas[i].gpus)))
            nxt += replicas[i].gpus
        return DeploymentPlan(
            replicas=tuple(replicas[i] for i in order), devices=tuple(devices), dispatch=tuple(rows[i] for i in order),
            type_rates=tuple(float(v) for v in self.lam), served_rps=d.served_rps, peak_utilisation=d.peak_utilisation,
            utilisation=tuple(util[i] for i in order), policy=policy, steps=steps, evaluations=self.evaluations,
            solve_time_s=0.0 if t0 is None else time.perf_counter() - t0,
        )


def _sizes(problem: Problem, num_gpus: int) -> list[int]:
    g, out = problem.cost.min_gpus(), []
    while g <= num_gpus:
        if problem.cost.configs(g):
            out.append(g)
        g *= 2
    return out


def _canon(configs) -> Deployment:
    return tuple(sorted(configs, key=lambda c: (c.gpus, c.tp, c.pp)))


def homogeneous_candidates(problem: Problem, num_gpus: int) -> list[Deployment]:
    """Every deployment of N // g identical replicas."""
    return [_canon([c] * (num_gpus // g)) for g in _sizes(problem, num_gpus) for c in problem.cost.configs(g)]


def best_homogeneous(problem: Problem, num_gpus: int) -> Deployment:
    return max(homogeneous_candidates(problem, num_gpus), key=problem.score)


def _moves(problem: Problem, dep: Deployment, b: int, r: int, num_gpus: int) -> list[Deployment]:
    """Candidate deployments that move GPUs from redundant replica r to bottleneck replica b, re-enumerating
    TP/PP for the replicas that changed."""
    cm, reps = problem.cost, list(dep)
    rb, rr = reps[b], reps[r]
    free = num_gpus - sum(c.gpus for c in reps)
    if b == r:  # b alone: split it, reshape it, or grow it into free GPUs
        rest = [c for i, c in enumerate(reps) if i != b]
        out = [_canon(rest + [c]) for c in cm.configs(rb.gpus)]
        if rb.gpus // 2 >= 1:
            out += [_canon(rest + [c1, c2]) for c1 in cm.configs(rb.gpus // 2) for c2 in cm.configs(rb.gpus // 2)]
        if free >= rb.gpus:
            out += [_canon(rest + [c]) for c in cm.configs(2 * rb.gpus)]
        return [d for d in out if sum(c.gpus for c in d) <= num_gpus and d != dep]
    rest = [c for i, c in enumerate(reps) if i not in (b, r)]
    out = []
    # 1. r joins b: one replica of twice the size (when they are the same size).
    if rb.gpus == rr.gpus:
        out += [_canon(rest + [c]) for c in cm.configs(2 * rb.gpus)]
    # 2. r gives half its GPUs: r shrinks, and the half becomes a new replica or b grows by it.
    h = rr.gpus // 2
    if h >= 1 and cm.configs(h):
        for cr in cm.configs(h):
            out += [_canon(rest + [rb, cr, cn]) for cn in cm.configs(h)]
            if rb.gpus == h:
                out += [_canon(rest + [cr, cb]) for cb in cm.configs(2 * h)]
    # 3. b splits into two halves (more data parallelism for compute-bound types), r reshaped in place.
    hb = rb.gpus // 2
    if hb >= 1:
        out += [_canon(rest + [rr, c1, c2]) for c1 in cm.configs(hb) for c2 in cm.configs(hb)]
    out += [_canon(rest + [rb, c]) for c in cm.configs(rr.gpus)]
    out += [_canon(rest + [c, rr]) for c in cm.configs(rb.gpus)]
    return [d for d in out if sum(c.gpus for c in d) <= num_gpus and d != dep]


def _roles(problem: Problem, dep: Deployment) -> list[tuple[int, int]]:
    """(bottleneck, redundant) index pairs, most-to-least promising: utilisation from the balanced dispatch."""
    keys, counts, n, _ = problem._classes(dep)
    d = solve_dispatch(n, problem.lam, counts=counts, tie_break=TieBreak.balance)
    util = np.array([d.utilisation[keys.index(c)] for c in dep])
    order = np.argsort(-util, kind="stable")
    pairs = [(int(b), int(r)) for b in order for r in order[::-1] if b != r]
    return pairs + [(int(b), int(b)) for b in order]  # then each replica on its own


def oserve_search(problem: Problem, num_gpus: int, start: Deployment | None = None) -> DeploymentPlan:
    """The two-level search.

    1. Start from the best homogeneous deployment.
    2. Solve the dispatch; rank replicas by utilisation: saturated ones are bottlenecks, idle ones redundant.
    3. For the next (bottleneck, redundant) pair, enumerate the GPU moves and TP/PP choices of the changed replicas.
    4. Keep the best candidate if it beats the incumbent (new pairs from step 2); otherwise try the next pair.
    5. Stop after `patience` steps without improvement.
    6. With a plan scorer: the search's result, the LP's best homogeneous deployment and the next best LP scores
       among every deployment seen, `finalists` in all, are scored; among those serving the planned rates as well
       as the best of them, the lowest score wins (so the plan is never worse than a homogeneous deployment that
       serves as much, by the scorer's measure).
    """
    t0 = time.perf_counter()
    cur = start if start is not None else best_homogeneous(problem, num_gpus)
    best = problem.score(cur)
    pairs, idx, stale, steps = _roles(problem, cur), 0, 0, 0
    while stale < problem.cfg.patience and steps < problem.cfg.max_steps:
        steps += 1
        if idx >= len(pairs):
            break
        b, r = pairs[idx]
        cands = _moves(problem, cur, b, r, num_gpus)
        top = max(cands, key=problem.score, default=None)
        if top is not None and problem.score(top) > best:
            cur, best = top, problem.score(top)
            pairs, idx, stale = _roles(problem, cur), 0, 0
        else:
            idx += 1
            stale += 1
    return finalize(problem, cur, num_gpus, "oserve", steps, t0)


def finalize(problem: Problem, best: Deployment, num_gpus: int, policy: str, steps: int, t0: float) -> DeploymentPlan:
    """Step 6 of oserve_search: rank the seen deployments by LP score, let the scorer pick among the finalists."""
    homogeneous = best_homogeneous(problem, num_gpus)
    seen = sorted((d for d in problem._scores if d), key=problem.score, reverse=True)
    seen = [d for d in seen if sum(c.gpus for c in d) <= num_gpus]
    k = problem.cfg.finalists if problem.scorer is not None else 0
    # The search's result and the best homogeneous deployment always reach the finals, then the next LP scores.
    finalists = list(dict.fromkeys([best, homogeneous] + seen))[:k] if k else []
    replay = {}
    if problem.scorer is not None and finalists:
        for d in finalists:
            replay[d] = float(problem.scorer(problem.plan(d, policy)))
        # A short replay cannot see a queue that grows by 1% an hour: only finalists that serve the planned rates as
        # well as the best of them (LP) compete on the replay score.
        top = max(problem.score(d)[0] for d in finalists)
        eligible = [d for d in finalists if problem.score(d)[0] >= top - 1e-3]
        best = min(eligible, key=lambda d: (replay[d], tuple(-x for x in problem.score(d))))
    cands = tuple(CandidateScore(_describe(d), float(problem.score(d)[0]), float(-problem.score(d)[1]), replay.get(d),
                                 d == best)
                  for d in seen[: max(len(finalists), 10)])
    return dataclasses.replace(problem.plan(best, policy, steps=steps, t0=t0), candidates=cands)


def _describe(dep: Deployment) -> str:
    c = Counter(str(r) for r in dep)
    return " + ".join(f"{v}x{k}" for k, v in sorted(c.items()))


def all_deployments(problem: Problem, num_gpus: int) -> list[Deployment]:
    """Every multiset of feasible replica configs using at most N GPUs (brute force; small N only)."""
    configs = [c for g in _sizes(problem, num_gpus) for c in problem.cost.configs(g)]
    out: list[Deployment] = []

    def rec(i: int, left: int, acc: list):
        if acc:
            out.append(_canon(acc))
        for k in range(i, len(configs)):
            if configs[k].gpus <= left:
                rec(k, left - configs[k].gpus, acc + [configs[k]])

    rec(0, num_gpus, [])
    return out


def brute_force(problem: Problem, num_gpus: int) -> DeploymentPlan:
    t0 = time.perf_counter()
    deps = all_deployments(problem, num_gpus)
    if not deps:
        raise ValueError(f"no deployment of {problem.cost.model.name} fits {num_gpus} GPUs")
    best = max(deps, key=problem.score)
    return problem.plan(best, "brute_force", t0=t0)
