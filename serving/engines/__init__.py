"""vLLM replicas as Ray actors: one engine per replica, each with its own tensor/pipeline degrees.

The only part of `serving` (with `serving.router` and `serving.executor`) that uses vllm and ray; both are imported
inside functions, so `import serving.engines` loads neither. `serving.engines.profile` times a live replica's
iterations into the measured cost model's table format (what the simulator and the scheduler are then fed).
"""

from serving.engines.config import Chunk, Device, EngineConfig, ReplicaStats, engine_env

__all__ = ["Chunk", "Device", "EngineConfig", "ReplicaStats", "engine_env"]
