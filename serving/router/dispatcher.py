"""The router's mechanism: admits a request (bounded), types it, sends it where the policy says, and re-dispatches
it when its replica fails, so the caller receives each token once, in order.

A replica here is anything with `name`, `alive` and `generate(request_id, prompt_token_ids, sampling)` streaming
`Chunk`s and raising `ReplicaFailed` (serving.engines.replica.Replica; the tests' in-process fakes).
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from common.stats import RequestTypes
from serving.engines.config import Chunk
from serving.engines.replica import ReplicaFailed
from serving.router.policy import RoutingTable, choose

log = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """The router's queue is full (HTTP 429)."""


class NoReplica(RuntimeError):
    """No live replica can take the request (HTTP 503)."""


@dataclass(frozen=True)
class Request:
    id: str  # the router's id (the engine sees `<id>-<attempt>`)
    prompt_token_ids: tuple[int, ...]
    max_tokens: int
    sampling: dict = field(default_factory=dict)  # SamplingParams fields other than max_tokens
    resume: bool = True  # streaming: a re-dispatch continues from prompt + tokens already sent; else it restarts


@dataclass(frozen=True)
class Dispatched:
    """One attempt of one request (the record tests and metrics read)."""

    request_id: str
    request_type: int
    replica: str
    attempt: int


@dataclass(frozen=True)
class Deployment:
    """What the dispatcher routes over; replaced as a whole, so a request sees one plan or the next, never a mix."""

    table: RoutingTable
    replicas: tuple  # [K] replica objects, in the table's order


class Dispatcher:
    def __init__(self, types: RequestTypes, max_in_flight: int, max_attempts: int = 4, history: int = 100_000,
                 on_failure: Callable[[str], None] | None = None):
        self.types = types
        self.max_in_flight = max_in_flight  # requests admitted and not finished; beyond it, Overloaded
        self.max_attempts = max_attempts  # dispatches per request before its failure is the caller's
        self.on_failure = on_failure  # told the name of a replica that failed (the executor replaces it)
        self.deployment: Deployment | None = None
        self.open = 0
        self.queue: Counter[str] = Counter()  # replica name -> requests open on it (the JSQ queue length)
        self.failed: set[str] = set()
        self.history: deque[Dispatched] = deque(maxlen=history)
        self.served: Counter[tuple[int, str]] = Counter()  # (type, replica) -> requests finished there
        self._ids = itertools.count()

    # ---- deployment -----------------------------------------------------------------------------------------------
    def install(self, table: RoutingTable, replicas: Sequence) -> None:
        if [r.name for r in replicas] != list(table.replicas):
            raise ValueError("replicas must be given in the routing table's order")
        if table.num_types != self.types.num_types:
            raise ValueError(f"plan has {table.num_types} request types, the type model {self.types.num_types}")
        self.deployment = Deployment(table, tuple(replicas))

    def open_on(self, names) -> int:
        """Requests open on the replicas called `names` (the executor drains until this is 0)."""
        return sum(self.queue[n] for n in names)

    # ---- requests -------------------------------------------------------------------------------------------------
    def classify(self, prompt_tokens: int, max_tokens: int) -> int:
        return int(self.types.assign([prompt_tokens], [max_tokens])[0])

    def new_id(self) -> str:
        return f"req-{next(self._ids)}"

    async def stream(self, req: Request) -> AsyncIterator[Chunk]:
        """Chunks of one request, each token once and in order, across replica failures.

        0. Admission, at the first `__anext__`: beyond `max_in_flight` open requests, Overloaded (nothing sent).
        1. Type the request; pick a replica (policy.choose) from the deployment current at this attempt.
        2. Stream from it. A streaming request's chunks go out as they come; a non-streaming one's are held until
           the replica finishes, so that a failure leaves nothing sent.
        3. On ReplicaFailed: mark it, and go to 1 with prompt + tokens sent (streaming) or the bare prompt.
        """
        if self.open >= self.max_in_flight:
            raise Overloaded(f"router queue full: {self.open} requests in flight (limit {self.max_in_flight}); "
                             "retry later")
        self.open += 1
        try:
            j = self.classify(len(req.prompt_token_ids), req.max_tokens)
            sent: list[int] = []
            for attempt in itertools.count():
                # Step 1
                dep = self.deployment
                if dep is None:
                    raise NoReplica("no deployment installed")
                alive = [r.alive and r.name not in self.failed for r in dep.replicas]
                queue = [self.queue[r.name] for r in dep.replicas]
                k = choose(dep.table, j, queue, alive)
                if k is None:
                    raise NoReplica("no live replica")
                rep = dep.replicas[k]
                self.history.append(Dispatched(req.id, j, rep.name, attempt))
                prompt, left = list(req.prompt_token_ids), req.max_tokens
                if req.resume:
                    prompt += sent
                    left -= len(sent)
                if left <= 0:  # the replica died after its last token but before saying it had finished
                    yield Chunk((), "", "length")
                    return
                held: list[Chunk] = []
                self.queue[rep.name] += 1
                try:
                    # Step 2
                    async for c in rep.generate(f"{req.id}-{attempt}", prompt, dict(req.sampling, max_tokens=left)):
                        if req.resume:
                            sent += c.token_ids
                            yield c
                        else:
                            held.append(c)
                    for c in held:
                        yield c
                    self.served[(j, rep.name)] += 1
                    return
                except ReplicaFailed as e:
                    # Step 3
                    log.warning("%s: %s; re-dispatching (attempt %d, %d tokens sent)", req.id, e, attempt + 1,
                                len(sent))
                    if not rep.alive:
                        self.failed.add(rep.name)
                        if self.on_failure is not None:
                            self.on_failure(rep.name)
                    if attempt + 1 >= self.max_attempts:
                        raise
                finally:
                    self.queue[rep.name] -= 1
        finally:
            self.open -= 1
