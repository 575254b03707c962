"""The executor: the only writer of the dispatcher's deployment, so plan switches and failure replacements never
interleave."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from serving.costmodel.iteration import ReplicaConfig
from serving.executor.diff import diff_plans
from serving.router.dispatcher import Dispatcher
from serving.router.policy import table_from_plan
from serving.scheduler.plan import DeploymentPlan

log = logging.getLogger(__name__)

# (name, replica config) -> a started, warmed replica (serving.engines.replica.start_replica with its EngineConfig
# bound; tests pass fakes).
StartFn = Callable[[str, ReplicaConfig], Awaitable]


@dataclass(frozen=True)
class SwitchReport:
    started: tuple[str, ...]  # replicas started for the new plan
    kept: tuple[str, ...]  # replicas that served on
    stopped: tuple[str, ...]  # replicas drained and stopped
    start_s: float  # starting and warming the new replicas (on CPU: a model load each, in parallel)
    drain_s: float  # from the table switch until the old replicas had finished their requests
    total_s: float  # the whole switch, wall-clock


class Executor:
    def __init__(self, dispatcher: Dispatcher, start: StartFn, drain_timeout_s: float = 600.0):
        self.dispatcher = dispatcher
        self.start = start
        self.drain_timeout_s = drain_timeout_s
        self.plan: DeploymentPlan | None = None
        self.replicas: list = []  # [K] of the current plan, in its order
        self.lock = asyncio.Lock()
        self.replacing: set[asyncio.Task] = set()
        self._n = itertools.count()
        dispatcher.on_failure = self._on_failure

    def _name(self, cfg: ReplicaConfig) -> str:
        return f"{cfg}-{next(self._n)}"

    async def apply(self, plan: DeploymentPlan) -> SwitchReport:
        """Switch to `plan` under load; no request is dropped or answered twice.

        1. Start and warm the replicas the new plan adds (the old ones keep serving meanwhile).
        2. Install the new routing table in one step: requests from now on see only the new plan.
        3. Drain the replicas the new plan drops: they refuse new work (a request that picked one just before step 2
           is re-dispatched by the dispatcher) and finish what they hold.
        4. Stop them.
        """
        async with self.lock:
            t0 = time.perf_counter()
            steps = diff_plans(self.plan, plan)
            # Step 1
            names = {k: self._name(plan.replicas[k]) for k in steps.start}
            new = await asyncio.gather(*[self.start(names[k], plan.replicas[k]) for k in steps.start])
            t1 = time.perf_counter()
            reps: list = [None] * len(plan.replicas)
            for k, r in zip(steps.start, new):
                reps[k] = r
            for o, k in steps.keep:
                reps[k] = self.replicas[o]
            old = [self.replicas[o] for o in steps.stop]
            # Step 2
            self.dispatcher.install(table_from_plan(plan, [r.name for r in reps]), reps)
            self.plan, self.replicas = plan, reps
            # Step 3
            await asyncio.gather(*[r.drain(self.drain_timeout_s) for r in old if r.alive])
            while self.dispatcher.open_on([r.name for r in old]):
                await asyncio.sleep(0.01)
            t2 = time.perf_counter()
            # Step 4
            await asyncio.gather(*[r.stop() for r in old])
            rep = SwitchReport(tuple(r.name for r in new), tuple(reps[k].name for _, k in steps.keep),
                               tuple(r.name for r in old), t1 - t0, t2 - t1, time.perf_counter() - t0)
            log.info("plan %s applied: started %s, stopped %s (start %.1f s, drain %.1f s)", plan.describe(),
                     rep.started, rep.stopped, rep.start_s, rep.drain_s)
            return rep

    def _on_failure(self, name: str) -> None:
        task = asyncio.get_running_loop().create_task(self._replace(name))
        self.replacing.add(task)
        task.add_done_callback(self.replacing.discard)

    async def _replace(self, name: str) -> None:
        """Start a replica like the dead one and route its share to it (its requests were already re-dispatched)."""
        async with self.lock:
            ks = [k for k, r in enumerate(self.replicas) if r.name == name]
            if not ks:  # already replaced, or dropped by a plan switch
                return
            k = ks[0]
            log.warning("replica %s failed; starting a replacement", name)
            dead = self.replicas[k]
            fresh = await self.start(self._name(self.plan.replicas[k]), self.plan.replicas[k])
            reps = list(self.replicas)
            reps[k] = fresh
            self.dispatcher.install(table_from_plan(self.plan, [r.name for r in reps]), reps)
            self.replicas = reps
            try:  # free what the dead one held (its placement group)
                await dead.stop()
            except Exception as e:
                log.warning("stopping failed replica %s: %s", name, e)

    async def settle(self) -> None:
        """Wait for pending failure replacements."""
        while self.replacing:
            await asyncio.gather(*list(self.replacing), return_exceptions=True)

    async def stop(self) -> None:
        """Stop every replica (after pending replacements)."""
        for t in list(self.replacing):
            t.cancel()
        async with self.lock:
            await asyncio.gather(*[r.stop() for r in self.replicas], return_exceptions=True)
            self.replicas = []
