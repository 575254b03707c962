"""Run a function on N gloo processes (spawned, free port, hard timeout) and collect each rank's return value."""

from __future__ import annotations

import os
import socket
import sys
import traceback
from pathlib import Path

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, fn, queue):
    import torch
    import torch.distributed as dist

    # DeepSpeed JIT-compiles a shared-memory op at its first init; reuse the venv's cache (as the Makefile does).
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
        queue.put((rank, fn(rank, world_size), None))
        dist.destroy_process_group()
    except BaseException:  # report, do not hang the parent
        queue.put((rank, None, traceback.format_exc()))


def run_distributed(fn, world_size: int, timeout_s: float = 240.0) -> list:
    """fn(rank, world_size) -> picklable result, on every rank. Fails (never hangs) after timeout_s."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, fn, queue), daemon=True) for r in range(world_size)]
    for p in procs:
        p.start()
    results, errors = [None] * world_size, []
    try:
        for _ in range(world_size):
            rank, value, err = queue.get(timeout=timeout_s)
            results[rank] = value
            if err:
                errors.append(f"rank {rank}:\n{err}")
                break
    except Exception as e:  # queue.Empty: a rank hung or died
        errors.append(f"no result within {timeout_s}s ({type(e).__name__}); a rank hung or crashed")
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    if errors:
        raise AssertionError("\n".join(errors))
    return results
