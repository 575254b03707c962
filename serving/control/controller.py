"""The closed-loop controller: every interval, predict -> plan on the forecast -> plan the switch -> decide.

Gain and cost are both in request-seconds of waiting, so they compare directly:
  expected waiting W(plan, lambda, H) over a horizon of H seconds, for the plan's dispatch solved on lambda:
      W = H * sum_kj x_kj (l_kj + min(l_kj u_k / (1 - u_k), H / 2))   (served: latency + queueing, u_k <= u_max)
        + H U (max_kj l_kj + H / 2)          (U = sum lambda - served: a backlog over the horizon, then served)
  gain = W(current deployment, forecast) - W(target, forecast)
  cost = sum over target replicas built anew of x_k r_k^2 / 2 (arrivals routed to a replica in its r_k seconds of
         loading wait until it is ready) + sum over moved requests of their KV's ready time (each stalls that long).
should_switch: gain > margin * cost, and gain > min_gain * W(current) (plans closer than that differ by less than the
forecast's noise and the cost model's error). A stable workload plans the deployment already in place (gain 0, and
cost 0 only when nothing changes), so it never switches; a forecast that wobbles proposes switches whose small gain
does not pay their cost (hysteresis).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from serving.control.config import ControllerConfig, SwitchMode
from serving.control.forecast import Forecaster
from serving.control.planner import ForecastPlanner
from serving.scheduler import DeploymentPlan

# (current plan or None, target plan, in-flight requests) -> a switch plan (serving.switching.plan_switch's
# SwitchPlan: target, replica_ready_s, kept, kv, total_s), the model and cluster bound in by the caller.
SwitchPlanner = Callable[[DeploymentPlan | None, DeploymentPlan, Sequence], object]
# target plan -> seconds a cold reload of it takes (serving.switching.cold_reload_s, model and cluster bound in).
ReloadTime = Callable[[DeploymentPlan], float]


def expected_wait(plan: DeploymentPlan, planner: ForecastPlanner, horizon_s: float, max_utilisation: float) -> float:
    """W above for a plan whose dispatch was solved on its type_rates (request-seconds over horizon_s)."""
    served, slowest = 0.0, 0.0
    for c, x, u in zip(plan.replicas, plan.dispatch, plan.utilisation):
        _, lat = planner.capacity(c)
        u = min(float(u), max_utilisation)
        # Queueing in front of l, never longer than the backlog's wait: a queue that close to saturation is the
        # backlog of an overloaded replica over the horizon, not M/M/1's unbounded mean.
        served += float(np.dot(x, lat + np.minimum(lat * u / (1 - u), horizon_s / 2)))
        slowest = max(slowest, float(np.max(lat)))
    backlog = max(sum(plan.type_rates) - plan.served_rps, 0.0)
    # An unserved request waits the backlog (H / 2 on average) and is then served no faster than the slowest
    # replica, so serving more never looks worse than serving less.
    return horizon_s * (served + backlog * (slowest + horizon_s / 2))


def switch_cost(switch, target: DeploymentPlan) -> float:
    """Request-seconds of waiting a switch causes (module docstring): loading replicas and stalled KV moves."""
    kept = set(switch.kept)
    load = sum(sum(target.dispatch[k]) * float(r) ** 2 / 2 for k, r in enumerate(switch.replica_ready_s)
               if k not in kept)
    return float(load + sum(float(a.ready_s) for a in switch.kv if a.move))


def should_switch(gain_s: float, cost_s: float, margin: float = 1.0, floor_s: float = 0.0) -> bool:
    """Switch only when the predicted gain pays for the switch and clears the noise floor (all request-seconds)."""
    return gain_s > 0 and gain_s > margin * cost_s and gain_s > floor_s


@dataclass(frozen=True)
class ReloadSwitch:
    """A cold reload as a switch plan: every target replica restarts from storage; nothing is kept, no KV moves
    (the in-flight requests restart on the new deployment: serving.sim.closedloop)."""

    target: DeploymentPlan
    replica_ready_s: tuple[float, ...]  # [K_target] all the reload time
    total_s: float
    kept: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()
    kv: tuple = ()


@dataclass(frozen=True)
class Decision:
    time_s: float  # when it was taken (the start of interval `interval`)
    interval: int  # the interval forecast
    forecast: tuple[float, ...]  # [J] predicted rates, req/s
    current: DeploymentPlan  # the deployment in place (its dispatch re-solved on the forecast with cfg.redispatch)
    target: DeploymentPlan  # the scheduler's plan on the forecast
    switch: bool  # carry out `switch_plan`
    switch_plan: object | None  # how to get from current to target (a SwitchPlan or ReloadSwitch); None: same
    gain_s: float  # predicted request-seconds of waiting saved over the horizon
    cost_s: float  # request-seconds of waiting the switch causes
    reason: str  # why (for the log)

    @property
    def plan(self) -> DeploymentPlan:
        """The plan serving from now on."""
        return self.switch_plan.target if self.switch else self.current


@dataclass(frozen=True)
class Controller:
    """The policy (pure: numbers in, a Decision out). The predictor, the scheduler and the switch planner come in."""

    cfg: ControllerConfig
    forecaster: Forecaster
    planner: ForecastPlanner
    plan_switch: SwitchPlanner | None = None  # needed for SwitchMode.fast
    reload_s: ReloadTime | None = None  # needed for SwitchMode.reload

    def __post_init__(self):
        check_controller(self.cfg)
        if self.cfg.switching is SwitchMode.fast and self.plan_switch is None:
            raise ValueError("Controller: switching fast needs a switch planner (plan_switch)")
        if self.cfg.switching is SwitchMode.reload and self.reload_s is None:
            raise ValueError("Controller: switching reload needs the cold reload time (reload_s)")

    def gain(self, here: DeploymentPlan, target: DeploymentPlan, cfg: ControllerConfig) -> tuple[float, float]:
        """(W(here) - W(target), the noise floor min_gain * W(here)) for plans dispatched on the same rates."""
        w_here = expected_wait(here, self.planner, cfg.horizon_s, cfg.max_utilisation)
        return w_here - expected_wait(target, self.planner, cfg.horizon_s, cfg.max_utilisation), cfg.min_gain * w_here

    def decide(self, time_s: float, history: np.ndarray, current: DeploymentPlan, inflight: Sequence = ()) -> Decision:
        """1. forecast the next interval from `history` [t, J] (the intervals before it);
        2. plan on the forecast, and re-solve the dispatch of the deployment in place;
        3. the gain: the least over the forecasts from the last `confirm` histories, the target and the deployment
           in place dispatched on each;
        4. plan the switch (fast: the switch planner with the in-flight requests; reload: everything from storage);
        5. switch when the gain over the horizon pays the cost and clears the noise floor."""
        cfg = self.cfg
        t = len(history)
        fc = np.maximum(np.asarray(self.forecaster.forecast(history), float), 0.0)  # Step 1
        here = self.planner.redispatch(current, fc)  # Step 2
        target = self.planner.plan(fc)
        gain, floor = self.gain(here, target, cfg)  # Step 3
        for back in range(1, cfg.confirm):  # the same target on the earlier forecasts: the least gain counts
            if t - back < self.forecaster.window:
                break
            earlier = np.maximum(np.asarray(self.forecaster.forecast(history[: t - back]), float), 0.0)
            g, f = self.gain(self.planner.redispatch(current, earlier), self.planner.redispatch(target, earlier), cfg)
            gain, floor = min(gain, g), max(floor, f)
        kept = here if cfg.redispatch else current  # what serves on when there is no switch
        common = dict(time_s=time_s, interval=t, forecast=tuple(float(v) for v in fc), current=kept, target=target)
        if target.describe() == current.describe():
            return Decision(**common, switch=False, switch_plan=None, gain_s=0.0, cost_s=0.0,
                            reason="the forecast's plan is the deployment in place")
        if gain <= floor:
            return Decision(**common, switch=False, switch_plan=None, gain_s=float(gain), cost_s=0.0,
                            reason=f"gain {gain:.0f} req-s within the noise floor {floor:.0f}")
        if cfg.switching is SwitchMode.fast:  # Step 4
            sp = self.plan_switch(current, target, inflight)
        else:
            r = float(self.reload_s(target))
            sp = ReloadSwitch(target, tuple(r for _ in target.replicas), r,
                              removed=tuple(range(len(current.replicas))))
        cost = switch_cost(sp, sp.target)
        go = should_switch(gain, cost, cfg.margin, floor)  # Step 5
        why = f"gain {gain:.0f} req-s {'>' if go else '<='} {cfg.margin:g} x cost {cost:.0f} req-s"
        return Decision(**common, switch=go, switch_plan=sp, gain_s=float(gain), cost_s=cost, reason=why)


def check_controller(cfg: ControllerConfig) -> None:
    """One-line errors naming the field."""
    for key in ("interval_s", "horizon_s"):
        v = getattr(cfg, key)
        if not (isinstance(v, (int, float)) and v > 0):
            raise ValueError(f"ControllerConfig.{key} must be > 0, got {v!r}")
    if not cfg.min_gain >= 0:
        raise ValueError(f"ControllerConfig.min_gain must be >= 0, got {cfg.min_gain!r}")
    if not (isinstance(cfg.confirm, int) and cfg.confirm >= 1):
        raise ValueError(f"ControllerConfig.confirm must be an integer >= 1, got {cfg.confirm!r}")
    if not cfg.margin >= 0:
        raise ValueError(f"ControllerConfig.margin must be >= 0, got {cfg.margin!r}")
    if not 0 < cfg.max_utilisation < 1:
        raise ValueError(f"ControllerConfig.max_utilisation must lie in (0, 1), got {cfg.max_utilisation!r}")
