"""Run a function on N local processes joined in one torch.distributed group (benchmarks, tests, the profiler).

    results = run_local(fn, world_size=2, backend="gloo")   # fn(rank, world_size, *args) -> picklable, on every rank

Each process is spawned (never forked: torch and gloo threads do not survive a fork), joins the group on a free
127.0.0.1 port with the backend the caller names, runs fn, and sends its return value back. A rank that raises
reports its traceback; a rank that dies makes the call fail at once, and one that hangs after `timeout_s`, instead
of hanging it.
torch is imported here only, inside the functions: `import common` stays light.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable, Mapping
from queue import Empty

# glibc hands large freed blocks back to the OS, so every training step page-faults its activations and gradients in
# afresh (measured at ~5% of a CPU step of the FSEP benchmark, in every method alike); a GPU's caching allocator keeps
# them. Passed as `env` to run_local, it makes worker processes keep freed memory (all heap, never trimmed), as a
# caching allocator would. glibc reads these when a process starts, so they cannot be set from inside the worker.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


class LaunchError(RuntimeError):
    """A rank raised, died or hung; the message holds each failing rank's traceback."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the OS picks it; a race with another process is possible but rare)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, backend: str, num_threads: int | None, fn, args, queue) -> None:
    import torch
    import torch.distributed as dist

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
        queue.put((rank, fn(rank, world_size, *args), None))
        dist.destroy_process_group()
    except BaseException:  # report, never hang the parent
        queue.put((rank, None, traceback.format_exc()))


def run_local(fn: Callable, world_size: int, backend: str, args: tuple = (), env: Mapping[str, str] | None = None,
              timeout_s: float | None = None, num_threads: int | None = 1) -> list:
    """[fn(rank, world_size, *args) for every rank], each run in its own spawned process of one process group.

    backend: "gloo" (CPU) or "nccl" (one GPU per rank; fn picks its device). env: variables set for the workers only
    (at their start; e.g. KEEP_FREED_MEMORY); the parent's environment is restored afterwards. timeout_s: fail after
    this long without every result (None: no limit; a rank that exits without a result fails the call at once either
    way). num_threads: torch intra-op threads per rank (None: torch's default); 1 gives each rank one core, as a
    benchmark of N ranks on N cores needs.
    fn and args must be picklable (a module-level function). Raises LaunchError naming the failing ranks.
    """
    import torch.multiprocessing as mp

    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, backend, num_threads, fn, tuple(args), queue),
                         daemon=True) for r in range(world_size)]
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})  # a spawned child inherits the parent's environment at start
    try:
        for p in procs:
            p.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    results, errors = [None] * world_size, []
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    waiting = set(range(world_size))
    try:
        while waiting and not errors:
            try:
                rank, value, err = queue.get(timeout=1.0)
            except Empty:
                dead = sorted(r for r in waiting if procs[r].exitcode is not None)
                if dead:
                    try:  # a rank's result is flushed before its process exits: one last look, then it is lost
                        rank, value, err = queue.get(timeout=5.0)
                    except Empty:
                        codes = ", ".join(f"rank {r}: {procs[r].exitcode}" for r in dead)
                        errors.append(f"exited without a result ({codes}); killed by a signal or the OOM killer?")
                        break
                elif deadline is not None and time.monotonic() > deadline:
                    errors.append(f"no result within {timeout_s}s; a rank hung")
                    break
                else:
                    continue
            waiting.discard(rank)
            results[rank] = value
            if err:
                errors.append(f"rank {rank}:\n{err}")  # the other ranks are likely blocked in a collective with it
    finally:
        for p in procs:
            p.join(timeout=5)  # every rank has reported (or failed): what is left is exit
            if p.is_alive():
                p.kill()
    if errors:
        raise LaunchError("\n".join(errors))
    return results
