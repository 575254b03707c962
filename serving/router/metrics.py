"""Prometheus figures of the router and of its replicas' engines (read from the engines at scrape time)."""

from __future__ import annotations

import asyncio

from serving.router.dispatcher import Dispatcher


class RouterMetrics:
    """Counters and gauges in a registry of their own (several routers may live in one process, as in tests)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.rejected = Counter("loadwise_router_rejected", "requests refused with 429 (queue full)", registry=r)
        self.invalid = Counter("loadwise_router_invalid", "requests refused with 400", registry=r)
        self.latency = Histogram("loadwise_router_e2e_seconds", "end-to-end latency of answered requests",
                                 registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.tokens = Counter("loadwise_router_output_tokens", "output tokens sent", registry=r)
        self.open = Gauge("loadwise_router_in_flight", "requests admitted and not finished", registry=r)
        self.served = Gauge("loadwise_router_served", "requests finished, by type and replica",
                            ["type", "replica"], registry=r)
        self.queue = Gauge("loadwise_replica_router_queue", "requests the router has open on the replica",
                           ["replica"], registry=r)
        self.waiting = Gauge("loadwise_replica_waiting", "engine: requests waiting", ["replica"], registry=r)
        self.running = Gauge("loadwise_replica_running", "engine: requests running", ["replica"], registry=r)
        self.kv = Gauge("loadwise_replica_kv_usage", "engine: KV-cache fraction in use", ["replica"], registry=r)

    def observe(self, dispatcher: Dispatcher, e2e_s: float, output_tokens: int) -> None:
        self.latency.observe(e2e_s)
        self.tokens.inc(output_tokens)

    async def render(self, dispatcher: Dispatcher) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        self.open.set(dispatcher.open)
        for (j, name), n in dispatcher.served.items():
            self.served.labels(str(j), name).set(n)
        dep = dispatcher.deployment
        for rep in dep.replicas if dep else ():
            self.queue.labels(rep.name).set(dispatcher.queue[rep.name])
            if not rep.alive:
                continue
            try:
                s = await asyncio.wait_for(rep.stats(), timeout=2.0)
            except Exception:  # a replica that does not answer in time is left at its last figures
                continue
            self.waiting.labels(rep.name).set(s.waiting)
            self.running.labels(rep.name).set(s.running)
            self.kv.labels(rep.name).set(s.kv_usage)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
