"""Run a function on N gloo processes (spawned, free port, hard timeout) and collect each rank's return value."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path

from common.launch import LaunchError, run_local


def run_distributed(fn, world_size: int, timeout_s: float = 240.0) -> list:
    """fn(rank, world_size) -> picklable result, on every rank. Fails (never hangs) after timeout_s."""
    # DeepSpeed JIT-compiles a shared-memory op at its first init; reuse the venv's cache (as the Makefile does).
    env = {"TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))}
    try:
        return run_local(fn, world_size, "gloo", env=env, timeout_s=timeout_s)
    except LaunchError as err:
        raise AssertionError(str(err)) from None


def run_each(cases: Mapping[str, Callable], *args) -> dict[str, str | None]:
    """On one rank: every case(*args), {name: its traceback, or None when it passed}. A barrier after each case, so a
    case that failed on some ranks cannot leave collectives mismatched for the next."""
    import torch.distributed as dist

    out = {}
    for name, fn in cases.items():
        try:
            fn(*args)
            out[name] = None
        except Exception:
            out[name] = traceback.format_exc()
        dist.barrier()
    return out


def case_checker(all_cases, timeout_s: float = 300.0) -> Callable[[str, int], None]:
    """check(case, n): fail with every rank's traceback of `case`, from one run of `all_cases` (run_each over a
    case table) per world size n, shared by all the cases of a test module."""
    results: dict[int, list] = {}

    def check(case: str, n: int) -> None:
        if n not in results:
            results[n] = run_distributed(all_cases, n, timeout_s=timeout_s)
        errors = [f"rank {r}:\n{res[case]}" for r, res in enumerate(results[n]) if res[case]]
        assert not errors, "\n".join(errors)

    return check
