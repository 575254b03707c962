import dataclasses

import numpy as np
import pytest

from common.topology import h100_80g_4x8
from serving.costmodel import CostModel, get_model
from serving.scheduler import Problem, all_deployments, best_homogeneous, brute_force, oserve_search


def _problem(model="opt-30b", lam=(3.0, 1.0, 0.5), scale=1.0):
    cm = CostModel(get_model(model), h100_80g_4x8().with_shape(1))
    return Problem(cm, np.array(lam) * scale, np.array([200.0, 1500.0, 3000.0]), np.array([20.0, 300.0, 600.0]))


@pytest.mark.parametrize("scale", [1.0, 8.0, 30.0])
def test_search_between_homogeneous_and_brute_force(scale):
    pr = _problem(scale=scale)
    homo = pr.score(best_homogeneous(pr, 8))
    plan = oserve_search(pr, 8)
    bf = brute_force(pr, 8)
    s_plan = (round(plan.served_rps / pr.lam.sum(), 6), -plan.peak_utilisation)
    s_bf = (round(bf.served_rps / pr.lam.sum(), 6), -bf.peak_utilisation)
    assert s_plan >= tuple(np.array(homo) - [0, 1e-6])
    assert s_bf >= tuple(np.array(s_plan) - [0, 1e-6])  # brute force is the optimum


def test_plan_invariants_and_frozen():
    pr = _problem("llama2-70b", scale=10)
    pr_cluster = pr.cost.cluster.with_shape(4)
    pr.cost = CostModel(pr.cost.model, pr_cluster)
    plan = oserve_search(pr, 32)
    dev = [d for ds in plan.devices for d in ds]
    assert len(dev) == len(set(dev)) and max(dev) < 32 and plan.num_gpus <= 32
    for r, ds in zip(plan.replicas, plan.devices):
        assert len(ds) == r.gpus
        for s in range(r.pp):  # every TP group inside one node
            grp = ds[s * r.tp:(s + 1) * r.tp]
            assert len({d // 8 for d in grp}) == 1
    x = np.array(plan.dispatch)
    assert np.all(x.sum(0) <= np.array(plan.type_rates) + 1e-6)
    assert x.sum() == pytest.approx(plan.served_rps)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.served_rps = 0


def test_brute_force_enumerates_every_multiset():
    pr = _problem()
    deps = all_deployments(pr, 8)
    assert len(deps) == len(set(deps))
    assert all(sum(c.gpus for c in d) <= 8 for d in deps)
    sizes = {c.gpus for d in deps for c in d}
    assert sizes == {1, 2, 4, 8}


def test_simulated_capacity_close_to_analytic_and_monotone():
    """Profiling n_kj in the simulator lands near the analytic estimate, and a stricter TPOT target lowers it."""
    from common.synthetic import synthetic_request_trace
    from serving.costmodel import ReplicaConfig
    from serving.scheduler import Capacity, SchedulerConfig
    from serving.sim import SimulatedProfiler
    from serving.workload import build_workload

    tr, _ = synthetic_request_trace(600, rate_rps=5.0, seed=3)
    wl = build_workload(tr, 2)
    cm = CostModel(get_model("opt-30b"), h100_80g_4x8().with_shape(1))
    c = ReplicaConfig(2)
    def simulated(tpot):
        cfg = SchedulerConfig(tpot_target_s=tpot, capacity=Capacity.simulated)
        prof = SimulatedProfiler(ttft_target_s=2.0, tpot_target_s=tpot, max_model_len=cm.max_model_len)
        return Problem.from_workload(cm, wl, cfg, profiler=prof).capacity(c)[0]

    ana = Problem.from_workload(cm, wl, SchedulerConfig(tpot_target_s=0.1)).capacity(c)[0]
    sim = simulated(0.1)
    strict = simulated(0.05)
    assert np.all(sim > 0)
    assert np.all(np.abs(np.log(sim / ana)) < np.log(3))  # same order as the formula
    assert np.all(strict <= sim * 1.0001)
    with pytest.raises(ValueError, match="capacity"):
        Problem.from_workload(cm, wl, SchedulerConfig(capacity="guess")).capacity(c)
    with pytest.raises(ValueError, match="needs a capacity profiler"):
        Problem.from_workload(cm, wl, SchedulerConfig(capacity=Capacity.simulated)).capacity(c)


def test_workload_rates_mean_and_quantile():
    from common.traces import RequestTrace
    from serving.workload import build_workload

    # 2 types, type 0 at 1/s for 120 s then 3/s for 120 s; type 1 steady at 0.5/s.
    t0 = np.concatenate([np.arange(0, 120, 1.0), 120 + np.arange(0, 120, 1 / 3)])
    t1 = np.arange(0, 240, 2.0) + 0.25
    t = np.concatenate([t0, t1])
    inp = np.concatenate([np.full(t0.size, 100), np.full(t1.size, 3000)])
    out = np.concatenate([np.full(t0.size, 10), np.full(t1.size, 500)])
    o = np.argsort(t, kind="stable")
    tr = RequestTrace(t[o], inp[o], out[o], "two-phase")
    mean = build_workload(tr, 2)
    assert mean.rates == pytest.approx([t0.size / tr.duration_s, t1.size / tr.duration_s])
    peak = build_workload(tr, 2, rate_quantile=1.0)
    assert peak.rates == pytest.approx([3.0, 0.5])
    assert mean.mean_input == pytest.approx([100, 3000]) and mean.mean_output == pytest.approx([10, 500])


def test_search_improves_a_single_replica_start():
    """From one big replica the search can still split it (its only move): short requests want data parallelism."""
    from serving.costmodel import ReplicaConfig

    pr = _problem(scale=30.0)
    start = (ReplicaConfig(8),)
    plan = oserve_search(pr, 8, start=start)
    assert len(plan.replicas) > 1
    assert (round(plan.served_rps / pr.lam.sum(), 6), -plan.peak_utilisation) > pr.score(start)


def test_finalists_are_ranked_by_the_passed_in_scorer():
    """The scorer sees only the LP's finalists (never more than `finalists`), the lowest score wins, and the plan
    reports every candidate's scores. A scorer that prefers the homogeneous deployment gets it: the search can never
    end worse than the best homogeneous one by the scorer's own measure."""
    from serving.scheduler import SchedulerConfig

    seen = []

    def scorer(plan):
        seen.append(plan.describe())
        return 0.0 if len(set(plan.replicas)) == 1 else 1.0  # homogeneous first

    pr = _problem(scale=8.0)
    pr.cfg = SchedulerConfig(finalists=3)
    pr.scorer = scorer
    plan = oserve_search(pr, 8)
    assert 1 <= len(seen) <= 3
    assert any(" + " not in d for d in seen)  # a homogeneous deployment reached the finals ...
    assert len(set(plan.replicas)) == 1  # ... so the scorer's favourite won
    chosen = [c for c in plan.candidates if c.chosen]
    assert len(chosen) == 1 and chosen[0].deployment == plan.describe()
    assert min(c.replay_score for c in plan.candidates if c.replay_score is not None) == chosen[0].replay_score
    lp = [(c.served_share, -c.peak_utilisation) for c in plan.candidates]
    assert lp == sorted(lp, reverse=True)  # best LP score first
