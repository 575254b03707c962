"""In-process stand-ins for replicas, so the router and executor claims run without engines (seconds, not minutes).

A fake's token at position p of a sequence (prompt + output) is `token_at(p)`: a request's whole output is then
known in advance, and a re-dispatched stream that lost or repeated a token shows it.
"""

from __future__ import annotations

import asyncio

from serving.engines.config import Chunk, ReplicaStats
from serving.engines.replica import ReplicaFailed


def token_at(p: int) -> int:
    return 3 + p % 400


def expected_tokens(prompt_len: int, max_tokens: int) -> list[int]:
    return [token_at(prompt_len + i) for i in range(max_tokens)]


class FakeReplica:
    def __init__(self, name: str, step_s: float = 0.002):
        self.name, self.step_s = name, step_s
        self.alive = True
        self.draining = False
        self.started = self.stopped = False
        self.in_flight = 0
        self.requests: list[str] = []  # engine request ids it was given

    async def generate(self, request_id, prompt_token_ids, sampling):
        if not self.alive:
            raise ReplicaFailed(f"replica {self.name} died")
        if self.draining:
            raise ReplicaFailed(f"replica {self.name} is draining")
        self.requests.append(request_id)
        self.in_flight += 1
        try:
            n = sampling["max_tokens"]
            for i in range(n):
                await asyncio.sleep(self.step_s)
                if not self.alive:
                    raise ReplicaFailed(f"replica {self.name} died")
                t = token_at(len(prompt_token_ids) + i)
                yield Chunk((t,), f" t{t}", "length" if i == n - 1 else None)
        finally:
            self.in_flight -= 1

    async def stats(self):
        return ReplicaStats(0, self.in_flight, 0.0, self.in_flight, self.draining)

    async def health(self):
        return self.alive

    async def drain(self, timeout_s=600.0):
        self.draining = True
        while self.in_flight:
            await asyncio.sleep(0.005)
        return 0

    async def stop(self):
        self.stopped = True
        self.alive = False

    def kill(self):
        self.alive = False
