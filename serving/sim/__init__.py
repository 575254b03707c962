"""Trace-driven discrete-event simulator of a serving deployment."""

from serving.sim.metrics import SLO, request_latencies, summarize
from serving.sim.replica import EngineConfig
from serving.sim.simulator import SimResult, simulate

__all__ = ["SLO", "request_latencies", "summarize", "EngineConfig", "SimResult", "simulate"]
