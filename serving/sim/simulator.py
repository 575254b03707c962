"""Discrete-event simulation of a fixed deployment serving a request trace: a timeline with no changes
(serving/sim/timeline.py holds the one loop).

The loop walks arrivals in time order. Before routing an arrival at time t, the replicas it may depend on are advanced
to t (all of them for a dynamic dispatcher, only the target for a static one, whose routes are fixed up front);
each replica advances in iteration steps (replica.py). After the last arrival every replica drains.
"""

from __future__ import annotations

from serving.costmodel.iteration import IterationCost
from serving.sim.dispatcher import Dispatcher
from serving.sim.metrics import SLO
from serving.sim.replica import EngineConfig
from serving.sim.timeline import DEFAULT_ENGINE, DEFAULT_SLO, SimResult, simulate_timeline

__all__ = ["SimResult", "simulate"]


def simulate(
    arrival_s, input_tokens, output_tokens, labels, costs: list[IterationCost], dispatch: Dispatcher = Dispatcher.plan,
    weights=None, engine: EngineConfig = DEFAULT_ENGINE, max_model_len: int = 8192, slo: SLO = DEFAULT_SLO,
) -> SimResult:
    """Serve the requests on replicas with the given iteration costs.

    dispatch: a registered Dispatcher (plan needs weights [K, J] = x_kj).
    Requests longer than max_model_len have their prompt cut to fit (as the serving front end would).
    """
    return simulate_timeline(arrival_s, input_tokens, output_tokens, labels, costs, dispatch, weights, engine,
                             max_model_len, slo)
