"""The temporal controller (pure policy) and its closed loop in the simulator: a stable workload never switches, a
shifted one switches when it pays, nothing is lost through switches, bad inputs are one-line errors."""

from types import SimpleNamespace

import numpy as np
import pytest

from common.stats import type_rates
from common.topology import h100_80g_4x8
from serving.control import (
    Controller,
    ControllerConfig,
    ForecastPlanner,
    LastValue,
    Oracle,
    PlannerKind,
    ReloadSwitch,
    SwitchMode,
    balance_moves,
    check_history,
    kv_transfer_s,
    should_switch,
    switch_cost,
)
from serving.sim import Dispatcher
from serving.sim.closedloop import run_closed_loop
from tests.serving.test_experiment import TwoShapeCostModel

INTERVAL = 20.0


def standin_switch(load_s=3.0, kv_s=0.5, min_tokens=512):
    """A switch planner by hand (the real one is serving.switching.plan_switch): target replicas on the same devices
    with the same config are kept, the others load in load_s; in-flight requests of removed replicas with at least
    min_tokens of KV move to the first rebuilt replica (ready after kv_s), the rest drain."""

    def plan(current, target, inflight):
        here = set(zip(current.devices, current.replicas))
        kept = tuple(k for k, dc in enumerate(zip(target.devices, target.replicas)) if dc in here)
        stays = {i for i, dc in enumerate(zip(current.devices, current.replicas))
                 if dc in set(zip(target.devices, target.replicas))}
        new = [k for k in range(len(target.replicas)) if k not in kept]
        kv = tuple(SimpleNamespace(request=r.id, move=r.context_tokens >= min_tokens and bool(new),
                                   dst_replica=new[0] if new and r.context_tokens >= min_tokens else None,
                                   ready_s=kv_s if new and r.context_tokens >= min_tokens else 0.0)
                   for r in inflight if r.replica not in stays)
        ready = tuple(0.0 if k in kept else load_s for k in range(len(target.replicas)))
        return SimpleNamespace(target=target, kept=kept, kv=kv, replica_ready_s=ready, total_s=max(ready),
                               removed=tuple(i for i in range(len(current.replicas)) if i not in stays))

    return plan


def _trace(phases, seed=0):
    """Poisson arrivals; phases = [(seconds, short req/s, long req/s)]: short ~100 in / 20 out, long ~3000 / 200."""
    rng = np.random.default_rng(seed)
    arr, inp, out, t0 = [], [], [], 0.0
    for dur, short, long in phases:
        n = rng.poisson((short + long) * dur)
        arr.append(t0 + np.sort(rng.uniform(0, dur, n)))
        is_long = rng.random(n) < long / (short + long)
        inp.append(np.where(is_long, rng.integers(2700, 3300, n), rng.integers(80, 120, n)))
        out.append(np.where(is_long, rng.integers(180, 220, n), rng.integers(15, 25, n)))
        t0 += dur
    arr, inp, out = np.concatenate(arr), np.concatenate(inp), np.concatenate(out)
    return arr, inp, out, (inp > 1000).astype(np.int64)


def _loop(arr, inp, out, labels, forecaster, switching=SwitchMode.fast, gpus=8, **cfg):
    """forecaster: series [T, J] -> a Forecaster."""
    cm = TwoShapeCostModel()
    planner = ForecastPlanner(cm, np.array([100.0, 3000.0]), np.array([20.0, 200.0]), gpus, PlannerKind.oserve)
    T = int(np.ceil(arr[-1] / INTERVAL + 1e-9))
    series = type_rates(arr, labels, 2, INTERVAL, T)
    ctrl = Controller(ControllerConfig(interval_s=INTERVAL, switching=switching, **cfg), forecaster(series), planner,
                      plan_switch=standin_switch(), reload_s=lambda target: 60.0)
    initial = planner.plan(series[:1].mean(0))
    policy = None if switching is SwitchMode.none else (lambda t, h, cur, inflight: ctrl.decide(t, h, cur, inflight))
    return run_closed_loop(arr, inp, out, labels, series, INTERVAL, initial, cm.cost, policy, Dispatcher.affinity,
                           max_model_len=4096), series


def test_stable_workload_never_switches():
    """A constant mix with Poisson noise, forecast by the last interval's rates: the forecast's plan sometimes differs
    from the deployment in place, but the gain never clears the cost and the noise floor."""
    arr, inp, out, lab = _trace([(200.0, 24.0, 1.0)])
    res, _ = _loop(arr, inp, out, lab, lambda s: LastValue(1))
    assert len(res.decisions) >= 8
    assert not any(d.switch for d in res.decisions)
    assert len(res.plans) == 1 and res.sim.changes and all(c.built == 0 for c in res.sim.changes)
    assert any(d.target.describe() != d.current.describe() for d in res.decisions)  # the hysteresis did the work


def test_shift_switches_and_pays():
    """From short requests only to long ones only: the oracle controller switches to the long type's replicas, and
    its P99 beats the initial plan kept; no request is lost or answered twice through the switch (simulate asserts
    each completes once) and long in-flight requests move their KV."""
    arr, inp, out, lab = _trace([(80.0, 40.0, 0.0), (100.0, 0.3, 2.5)])
    res, series = _loop(arr, inp, out, lab, Oracle)
    kept, _ = _loop(arr, inp, out, lab, Oracle, switching=SwitchMode.none)
    switches = [d for d in res.decisions if d.switch]
    assert switches and switches[0].gain_s > switches[0].cost_s
    assert np.all(res.sim.completions == 1) and np.all(res.sim.finish_s >= res.sim.arrival_s)
    assert res.sim.summary["p99_latency_s"] < kept.sim.summary["p99_latency_s"]
    assert sum(c.built for c in res.sim.changes) >= 1


def test_oracle_reads_the_next_interval():
    s = np.arange(12.0).reshape(6, 2)
    assert np.array_equal(Oracle(s).forecast(s[:3]), s[3])


def test_should_switch_and_cost_units():
    assert not should_switch(10.0, 10.0) and should_switch(10.1, 10.0)
    assert not should_switch(50.0, 1.0, floor_s=60.0) and not should_switch(-1.0, -5.0)
    assert should_switch(30.0, 10.0, margin=2.0) and not should_switch(30.0, 10.0, margin=3.0)
    # Cost: arrivals to a replica loading for r seconds wait r - t: x r^2 / 2; a KV move stalls its ready time.
    target = SimpleNamespace(dispatch=((2.0, 1.0), (0.5, 0.0)))
    sp = SimpleNamespace(kept=(1,), replica_ready_s=(4.0, 0.0),
                         kv=(SimpleNamespace(move=True, ready_s=1.5), SimpleNamespace(move=False, ready_s=0.0)))
    assert switch_cost(sp, target) == pytest.approx(3.0 * 16 / 2 + 1.5)
    reload = ReloadSwitch(target, (60.0, 60.0), 60.0)
    assert switch_cost(reload, target) == pytest.approx(3.5 * 3600 / 2)


@pytest.mark.parametrize("key", ["interval_s", "horizon_s"])
def test_zero_interval_or_horizon_is_a_one_line_error(key):
    cm = TwoShapeCostModel()
    planner = ForecastPlanner(cm, np.array([100.0]), np.array([20.0]), 2)
    with pytest.raises(ValueError, match=f"ControllerConfig.{key} must be > 0") as e:
        Controller(ControllerConfig(**{key: 0.0}), LastValue(), planner, plan_switch=standin_switch())
    assert "\n" not in str(e.value)


def test_trace_shorter_than_window_is_a_one_line_error():
    with pytest.raises(ValueError, match="temporal.window: the trace has 3 intervals") as e:
        check_history(3, 6, "temporal.window")
    assert "\n" not in str(e.value)
    check_history(7, 6)


def test_missing_mechanism_is_an_error():
    planner = ForecastPlanner(TwoShapeCostModel(), np.array([100.0]), np.array([20.0]), 2)
    with pytest.raises(ValueError, match="switch planner"):
        Controller(ControllerConfig(), LastValue(), planner)
    with pytest.raises(ValueError, match="reload"):
        Controller(ControllerConfig(switching=SwitchMode.reload), LastValue(), planner)


def test_balance_moves_narrows_the_gap():
    """Replica 0 holds four requests, replica 1 none: moves go 0 -> 1 until the gap is within the threshold, never
    overshooting (each move is at most half the gap), and each stall is the transfer time asked for."""
    inflight = [SimpleNamespace(id=i, replica=0, context_tokens=c, remaining_tokens=100)
                for i, c in enumerate((900, 400, 300, 200))]
    mig = balance_moves(0.0, inflight, 2, lambda s, d, tok: tok * 1e-3, threshold=0.1)
    assert mig.loads == (2200.0, 0.0) and mig.moves
    assert all(m.src == 0 and m.dst == 1 for m in mig.moves)
    moved = {m.request for m in mig.moves}
    after = sum(c + 100 for i, c in enumerate((900, 400, 300, 200)) if i in moved)
    assert abs(2200 - 2 * after) < 2200 and after <= 1100
    assert all(m.ready_s == pytest.approx(inflight[m.request].context_tokens * 1e-3) for m in mig.moves)


def test_kv_transfer_time_from_the_topology():
    c = h100_80g_4x8()
    one_node = kv_transfer_s(1000, 1e6, [0, 1], [2, 3], c)
    across = kv_transfer_s(1000, 1e6, [0, 1], [8, 9], c)
    assert one_node == pytest.approx(c.intra_latency + 1e9 / (2 * c.intra_bw))
    assert across == pytest.approx(c.inter_latency + 1e9 / (2 * c.inter_bw))
    assert kv_transfer_s(0, 1e6, [0], [8], c) == 0.0


def test_bad_interval_in_the_loop_is_an_error():
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        run_closed_loop([0.0], [10], [5], [0], np.zeros((1, 1)), 0.0, None, None, None)


def test_without_redispatch_nothing_changes():
    """redispatch off and a stable workload: the deployment and its dispatch stay exactly as they were."""
    arr, inp, out, lab = _trace([(100.0, 24.0, 1.0)])
    res, _ = _loop(arr, inp, out, lab, lambda s: LastValue(1), redispatch=False)
    assert res.decisions and not any(d.switch for d in res.decisions) and res.sim.changes == ()
