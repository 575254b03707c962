"""Driver-side handle of one replica: its placement group, its actor, and async calls into it.

Resources: on a GPU cluster a replica reserves tp * pp GPU bundles (packed on one node when pp == 1, since TP groups
stay inside a node); vLLM's Ray executor places its TP/PP workers in that group. On CPU one bundle of
`cpus_per_replica` CPUs holds the actor and its engine core.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from serving.costmodel.iteration import ReplicaConfig
from serving.engines.config import Chunk, Device, EngineConfig, ReplicaStats


class ReplicaFailed(RuntimeError):
    """The replica's actor died or its engine failed while serving a request."""


def bundles(cfg: EngineConfig, replica: ReplicaConfig) -> tuple[list[dict], str]:
    """Placement-group bundles and strategy for one replica."""
    if cfg.device is Device.cpu:
        return [{"CPU": cfg.cpus_per_replica}], "PACK"
    gpu = [{"GPU": 1.0, "CPU": 1.0} for _ in range(replica.gpus)]
    gpu[0]["CPU"] += cfg.cpus_per_replica  # the actor (and the engine core) beside the first worker
    return gpu, "STRICT_PACK" if replica.pp == 1 else "PACK"


@dataclass
class StartTimes:
    placement_s: float  # waiting for the placement group
    load_s: float  # engine start (model load; on CPU a weight "transfer" is this reload)
    warmup_s: float


class Replica:
    """A started replica. `name` identifies it in the plan, the routing table, logs and metrics."""

    def __init__(self, name: str, replica: ReplicaConfig, actor, pg, times: StartTimes):
        self.name, self.config, self.actor, self.pg, self.times = name, replica, actor, pg, times
        self.alive = True

    async def generate(self, request_id: str, prompt_token_ids: list[int], sampling: dict) -> AsyncIterator[Chunk]:
        """Stream one request's Chunks; a dead actor or failed engine raises ReplicaFailed."""
        import ray

        gen = self.actor.generate.options(num_returns="streaming").remote(request_id, prompt_token_ids, sampling)
        finished = False
        try:
            async for ref in gen:
                chunk = await ref
                finished = chunk.finish_reason is not None
                yield chunk
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            self.alive = False
            raise ReplicaFailed(f"replica {self.name} died: {type(e).__name__}") from e
        except ray.exceptions.RayTaskError as e:
            raise ReplicaFailed(f"replica {self.name} failed the request: {e}") from e
        finally:
            if not finished and self.alive:
                try:  # the client went away: closing the actor's generator aborts the request in the engine
                    ray.cancel(gen)
                except Exception:  # already finished or the actor is gone
                    pass

    async def stats(self) -> ReplicaStats:
        return await self.actor.stats.remote()

    async def limits(self) -> dict:
        return await self.actor.limits.remote()

    async def health(self) -> bool:
        try:
            return await self.actor.health.remote()
        except Exception:
            return False

    async def drain(self, timeout_s: float = 600.0) -> int:
        return await self.actor.drain.remote(timeout_s)

    async def stop(self) -> None:
        """Shut the engine down, end the actor and free its resources."""
        import ray
        from ray.util.placement_group import remove_placement_group

        if self.alive:
            try:
                await self.actor.stop.remote()
            except Exception:  # already gone: killing below is all that is left
                pass
        ray.kill(self.actor)
        remove_placement_group(self.pg)
        self.alive = False

    def kill(self) -> None:
        """End the actor at once, as a crash would (tests and fault injection)."""
        import ray

        ray.kill(self.actor, no_restart=True)


async def start_replica(name: str, replica: ReplicaConfig, cfg: EngineConfig) -> Replica:
    """Reserve the replica's resources, start its engine and warm it up."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from serving.engines.actor import ReplicaActor

    t0 = time.perf_counter()
    b, strategy = bundles(cfg, replica)
    pg = placement_group(b, strategy=strategy, name=f"replica-{name}")
    await pg.ready()
    t1 = time.perf_counter()
    own_gpu = 1.0 if cfg.device is Device.gpu and replica.gpus == 1 else 0.0  # TP/PP > 1: the workers hold the GPUs
    actor_cls = ray.remote(ReplicaActor).options(
        name=f"replica-{name}", num_cpus=cfg.cpus_per_replica, num_gpus=own_gpu, max_concurrency=1000,
        scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0,
                                                             placement_group_capture_child_tasks=True),
    )
    actor = actor_cls.remote(cfg, replica.tp, replica.pp)
    try:
        load_s = await actor.start.remote()
        warm_s = await actor.warmup.remote()
    except Exception:
        ray.kill(actor)
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(pg)
        raise
    return Replica(name, replica, actor, pg, StartTimes(t1 - t0, load_s, warm_s))
