"""Start and stop the local Ray cluster the replicas live in."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def start_ray(num_cpus: int | None = None, num_gpus: int | None = None, address: str | None = None) -> None:
    """Join `address`, or start a local cluster of `num_cpus` CPUs. Workers import this checkout (PYTHONPATH), so the
    replica actor's class resolves there as it does in the driver."""
    import ray

    if ray.is_initialized():
        return
    # A local test cluster needs no token; set here, in the process that starts it, not in the user's shell.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(address=address, num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}}, log_to_driver=False)


def stop_ray() -> None:
    """Shut the cluster this process started down (its worker processes end with it)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
