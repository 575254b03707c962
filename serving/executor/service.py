"""The whole serving stack in one event loop: replicas on Ray (engines), the executor, the router on 127.0.0.1.

    svc = Service(engine_cfg, types, max_in_flight=64)
    url = await svc.start(plan, port=8000)    # replicas started and warm, router listening
    await svc.apply(next_plan)                 # live switch
    await svc.stop()                           # router, then replicas; the caller then stops Ray
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from common.stats import RequestTypes
from serving.engines.config import EngineConfig
from serving.executor.executor import Executor, SwitchReport
from serving.router.dispatcher import Dispatcher
from serving.scheduler.plan import DeploymentPlan

log = logging.getLogger(__name__)


class Service:
    def __init__(self, engine: EngineConfig, types: RequestTypes, max_in_flight: int = 64, model_name: str = ""):
        if not engine.model:
            raise ValueError("engine.model: empty; give a model directory or hub name")
        self.engine = engine
        self.model_name = model_name or engine.model
        self.dispatcher = Dispatcher(types, max_in_flight)
        self.executor = Executor(self.dispatcher, self._start_replica)
        self.server = None
        self.task: asyncio.Task | None = None

    async def _start_replica(self, name, cfg):
        from serving.engines.replica import start_replica

        r = await start_replica(name, cfg, self.engine)
        log.info("replica %s (%s) ready: load %.1f s, warm-up %.2f s", name, cfg, r.times.load_s, r.times.warmup_s)
        return r

    async def start(self, plan: DeploymentPlan, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start the plan's replicas, then the router; returns the router's URL."""
        from transformers import AutoTokenizer

        from serving.router.app import build_app
        from serving.router.metrics import RouterMetrics
        from serving.router.server import RouterServer

        await self.executor.apply(plan)
        tok = AutoTokenizer.from_pretrained(self.engine.model)
        app = build_app(self.dispatcher, tok, self.model_name, self.engine.max_model_len, RouterMetrics())
        self.server = RouterServer(app, host, port)
        self.server.server.install_signal_handlers = lambda: None  # Ctrl-C belongs to the entry point
        self.task = asyncio.get_running_loop().create_task(self.server.serve())
        while not self.server.server.started:
            if self.task.done():
                self.task.result()  # raises why it stopped
            await asyncio.sleep(0.02)
        return self.server.url

    async def apply(self, plan: DeploymentPlan) -> SwitchReport:
        return await self.executor.apply(plan)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.server.should_exit = True
            if self.task is not None:
                await asyncio.wait([self.task], timeout=10)
            self.server.sock.close()
        await self.executor.stop()


def with_model(engine: EngineConfig, cache_root) -> EngineConfig:
    """`engine` with its model set: as given, or (empty) the tiny local model, built into `cache_root` if absent."""
    if engine.model:
        return engine
    from serving.tinymodel import TinyModelSpec, build_tiny_model

    return replace(engine, model=str(build_tiny_model(TinyModelSpec(context=engine.max_model_len), cache_root)))
