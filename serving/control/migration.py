"""Llumnix-style load balancing by migration (the baseline): fixed homogeneous replicas, requests and their KV move
from the most to the least loaded replica.

A replica's load is the KV its requests will need: sum of context + remaining tokens (Llumnix's virtual usage
without priorities). A move's stall is its KV copy over the link between the two replicas (no pipelined live
copy: the request waits for all of it, a conservative reading of Llumnix's near-constant downtime).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from common.topology import ClusterSpec


@dataclass(frozen=True)
class MigrationMove:
    request: int  # request index
    src: int  # replica index it leaves
    dst: int  # replica index it continues on
    ready_s: float  # seconds after the decision when its KV is on dst


@dataclass(frozen=True)
class Migration:
    time_s: float  # when it was decided
    moves: tuple[MigrationMove, ...]
    loads: tuple[float, ...]  # [K] tokens of KV demand per replica before the moves


def kv_transfer_s(tokens: int, kv_bytes_per_token: float, src: Sequence[int], dst: Sequence[int],
                  cluster: ClusterSpec) -> float:
    """Seconds to copy `tokens` of KV from replica devices src to dst: each TP shard on its own link, in parallel
    (min(|src|, |dst|) links), NVLink inside a node, the NIC across."""
    if tokens <= 0:
        return 0.0
    same = cluster.node_of(src[0]) == cluster.node_of(dst[0])
    bw = cluster.intra_bw if same else cluster.inter_bw
    lat = cluster.intra_latency if same else cluster.inter_latency
    return lat + tokens * kv_bytes_per_token / (bw * min(len(src), len(dst)))


def balance_moves(time_s: float, inflight: Sequence, num_replicas: int, transfer_s: Callable[[int, int, int], float],
                  threshold: float = 0.25, max_moves: int = 8) -> Migration:
    """1. Load per replica from the in-flight requests (id, replica, context_tokens, remaining_tokens).
    2. While the heaviest exceeds the lightest by more than `threshold` x the mean load: move the request of the
       heaviest whose load is the largest not above half the gap (so the pair ends closer, never swapped), to the
       lightest; update both loads.
    3. At most `max_moves` moves; transfer_s(src, dst, context_tokens) gives each one's stall."""
    loads = np.zeros(num_replicas)  # Step 1
    by_replica: list[list] = [[] for _ in range(num_replicas)]
    for r in inflight:
        loads[r.replica] += r.context_tokens + r.remaining_tokens
        by_replica[r.replica].append(r)
    before = tuple(float(x) for x in loads)
    moves: list[MigrationMove] = []
    while len(moves) < max_moves and num_replicas > 1:  # Step 2
        hi, lo = int(np.argmax(loads)), int(np.argmin(loads))
        gap = loads[hi] - loads[lo]
        if gap <= threshold * max(loads.mean(), 1e-9):
            break
        fits = [r for r in by_replica[hi] if r.context_tokens + r.remaining_tokens <= gap / 2]
        if not fits:
            break
        r = max(fits, key=lambda q: (q.context_tokens + q.remaining_tokens, -q.id))
        size = r.context_tokens + r.remaining_tokens
        by_replica[hi].remove(r)
        by_replica[lo].append(r)
        loads[hi] -= size
        loads[lo] += size
        moves.append(MigrationMove(int(r.id), hi, lo, float(transfer_s(hi, lo, r.context_tokens))))  # Step 3
    return Migration(time_s, tuple(moves), before)
