"""Trace-driven discrete-event simulator of a serving deployment."""

from serving.sim.dispatcher import ROUTERS, Dispatcher, Router
from serving.sim.metrics import SLO, request_latencies, summarize
from serving.sim.profile import SimulatedProfiler
from serving.sim.replay import ReplayObjective, ReplayScorer, busiest_window
from serving.sim.replica import EngineConfig, SchedulingPolicy
from serving.sim.simulator import SimResult, simulate
from serving.sim.timeline import AppliedChange, DeploymentChange, Inflight, KVMove, simulate_timeline

__all__ = ["ROUTERS", "Dispatcher", "Router", "SLO", "request_latencies", "summarize", "SimulatedProfiler",
           "EngineConfig", "SchedulingPolicy", "SimResult", "ReplayObjective", "ReplayScorer", "busiest_window", "simulate",
           "AppliedChange", "DeploymentChange", "Inflight", "KVMove", "simulate_timeline"]
