"""common.launch: N local processes in one group, results per rank, failures reported instead of hanging."""

from __future__ import annotations

import os

import pytest

from common.launch import LaunchError, free_port, run_local


def _rank_sum(rank, world_size, offset):
    import torch
    import torch.distributed as dist

    t = torch.tensor([rank + offset], dtype=torch.float64)
    dist.all_reduce(t)  # a real collective: the ranks joined one group
    return {"rank": rank, "world": world_size, "sum": float(t), "backend": dist.get_backend(),
            "env": os.environ.get("LOADWISE_TEST_LAUNCH"), "threads": torch.get_num_threads()}


def _fail_on_rank_one(rank, world_size):
    if rank == 1:
        raise RuntimeError("rank one fails on purpose")
    return rank


def test_run_local_collects_every_rank(monkeypatch):
    monkeypatch.delenv("LOADWISE_TEST_LAUNCH", raising=False)
    out = run_local(_rank_sum, 2, "gloo", args=(10,), env={"LOADWISE_TEST_LAUNCH": "yes"}, timeout_s=120)
    assert [r["rank"] for r in out] == [0, 1]
    assert all(r["world"] == 2 and r["sum"] == 10 + 11 and r["backend"] == "gloo" for r in out)
    assert all(r["env"] == "yes" and r["threads"] == 1 for r in out)  # env and one thread reach the workers
    assert "LOADWISE_TEST_LAUNCH" not in os.environ  # ... and the parent's environment is restored


def test_run_local_reports_the_failing_rank():
    with pytest.raises(LaunchError, match="(?s)rank 1.*rank one fails on purpose"):
        run_local(_fail_on_rank_one, 2, "gloo", timeout_s=120)


def _die_on_rank_zero(rank, world_size):
    if rank == 0:
        os._exit(3)  # no traceback, no result: as a kill by a signal or the OOM killer
    return rank


def test_run_local_reports_a_dead_rank_instead_of_hanging():
    with pytest.raises(LaunchError, match="rank 0: 3"):
        run_local(_die_on_rank_zero, 2, "gloo")  # no timeout: only the exit can end the wait


def test_free_port_is_bindable():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))
