"""From the current deployment to the target: which shard moves from where, when, and what happens to the KV of
requests in flight (pure: numbers in, a frozen SwitchPlan out).

Link model: each device has a send and a receive port per link class (NVLink inside a node; its NIC across nodes:
separate hardware, so both run at once), each node one storage read port shared by its devices. A transfer holds
its ports from start to end = start + latency + bytes / bandwidth, and starts when all of them are free
(list scheduling in the order the greedy picks). Sources are the devices as they stand before the switch: old
weights stay resident until the switch ends (a piece a device has just received is not forwarded).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Sequence

from common.topology import ClusterSpec
from serving.costmodel.models import ModelSpec
from serving.costmodel.roofline import DEFAULT_PARAMS, kv_capacity_tokens
from serving.scheduler.plan import DeploymentPlan
from serving.switching.plan import (
    STORAGE,
    InflightRequest,
    KVAction,
    Shard,
    SwitchOptions,
    SwitchPlan,
    Transfer,
    TransferKind,
)
from serving.switching.remap import match_kept, remap_target
from serving.switching.shards import (
    describe,
    grid_cells,
    holdings,
    replica_roles,
    shard_bytes,
    unit_kv_bytes,
    unit_weight_bytes,
    validate_plan,
)


class _Links:
    """Busy-until time of every port (see the module docstring)."""

    def __init__(self, cluster: ClusterSpec, storage_bw: float):
        self.cluster, self.storage_bw = cluster, storage_bw
        self.free: dict[tuple, float] = defaultdict(float)

    def route(self, src: int, dst: int) -> tuple[tuple, float, float]:
        """(ports, bytes/s, latency) of a transfer src -> dst."""
        c = self.cluster
        if src == STORAGE:
            return (("storage", c.node_of(dst)),), self.storage_bw, 0.0
        link = "nvlink" if c.node_of(src) == c.node_of(dst) else "nic"
        return (("tx", src, link), ("rx", dst, link)), c.bandwidth(src, dst), c.latency(src, dst)

    def when(self, src: int, dst: int, nbytes: float) -> tuple[float, float]:
        ports, bw, lat = self.route(src, dst)
        start = max(self.free[p] for p in ports)
        return start, start + lat + nbytes / bw

    def book(self, src: int, dst: int, nbytes: float) -> tuple[float, float]:
        start, end = self.when(src, dst, nbytes)
        for p in self.route(src, dst)[0]:
            self.free[p] = end
        return start, end


def _pick_source(links: _Links, cluster: ClusterSpec, sources: list[int], dst: int, nbytes: float) -> int:
    """The holder whose link finishes the piece first, among holders on dst's node if any (NVLink before the
    network), else among the others; STORAGE when no device holds it. Ties go to the lower device id."""
    if not sources:
        return STORAGE
    local = [s for s in sources if cluster.node_of(s) == cluster.node_of(dst)]
    return min(local or sources, key=lambda s: (links.when(s, dst, nbytes)[1], s))


def _validate_inflight(inflight: Sequence[InflightRequest], current: DeploymentPlan | None) -> None:
    k = 0 if current is None else len(current.replicas)
    ids = set()
    for r in inflight:
        if r.context_tokens < 0 or r.remaining_tokens < 0:
            raise ValueError(f"in-flight request {r.id}: negative tokens (context {r.context_tokens}, "
                             f"remaining {r.remaining_tokens})")
        if not 0 <= r.replica < k:
            raise ValueError(f"in-flight request {r.id}: replica {r.replica} is not one of the current plan's {k}")
        if r.id in ids:
            raise ValueError(f"in-flight request {r.id} is listed twice")
        ids.add(r.id)


def plan_switch(current: DeploymentPlan | None, target: DeploymentPlan, model: ModelSpec, cluster: ClusterSpec,
                inflight: Sequence[InflightRequest] = (), options: SwitchOptions | None = None) -> SwitchPlan:
    """Plan the switch from `current` (None: a cold start, everything from storage) to `target`.

    1. Remap the target onto devices (serving.switching.remap): kept replicas need nothing.
    2. Cut what every device of a rebuilt replica needs into pieces at the edges of what the current devices hold;
       a piece the device already holds stays; the others, largest first, each come from the holder whose link
       finishes it first, NVLink before the network, storage only when no device holds it.
    3. In-flight requests of replicas that stop, longest context first: under kv_move_min_tokens they drain on
       their source; the others move their KV (cut the same way) to a target replica with room for
       context * (1 + kv_headroom) tokens: one reached over NVLink alone before one across nodes, then the one that
       lets them continue first; with no room anywhere they drain.
    """
    options = SwitchOptions() if options is None else options
    for name, plan in (("current", current), ("target", target)):
        if plan is not None:
            validate_plan(plan, cluster, model, name)
    _validate_inflight(inflight, current)
    L = model.num_layers
    links = _Links(cluster, options.storage_bw or cluster.storage_bw)
    tgt = remap_target(current, target, model, cluster)
    pairs = match_kept(current, tgt)
    kept = {k: c for k, c in pairs}
    removed = tuple(c for c in range(0 if current is None else len(current.replicas))
                    if c not in set(kept.values()))
    held = holdings(current, L)
    held_shards = [s for _, s in held.values()]
    wb = unit_weight_bytes(model)

    # Step 2: weights.
    pieces, in_place = [], 0.0
    for k, (cfg, devs) in enumerate(zip(tgt.replicas, tgt.devices)):
        if k in kept:
            continue
        for d, role in zip(devs, replica_roles(L, cfg.tp, cfg.pp)):
            for cell in grid_cells(role, held_shards):
                nbytes = shard_bytes(cell, wb)
                if d in held and held[d][1].contains(cell):
                    in_place += nbytes
                    continue
                sources = sorted(s for s, (_, h) in held.items() if h.contains(cell))
                pieces.append((nbytes, k, d, cell, sources))
    pieces.sort(key=lambda p: (-p[0], p[2], p[3].first_unit, p[3].col_lo))
    transfers = []
    ready = [0.0] * len(tgt.replicas)
    for nbytes, k, d, cell, sources in pieces:
        src = _pick_source(links, cluster, sources, d, nbytes)
        start, end = links.book(src, d, nbytes)
        transfers.append(Transfer(TransferKind.weights, src, d, nbytes, start, end, k, describe(cell, L), cell))
        ready[k] = max(ready[k], end)
    for k in range(len(tgt.replicas)):
        if k not in kept:
            ready[k] += options.rebuild_s

    # Step 3: KV of requests whose replica stops.
    kv_actions, kv_bytes = _plan_kv(current, tgt, model, cluster, inflight, options, kept, ready, links, transfers)
    transfers.sort(key=lambda t: (t.start_s, t.end_s, t.dst, t.src))
    return SwitchPlan(
        target=tgt, transfers=tuple(transfers), kv=tuple(kv_actions), replica_ready_s=tuple(ready),
        kept=tuple(k for k, _ in pairs), removed=removed, total_s=max((t.end_s for t in transfers), default=0.0),
        weight_bytes=sum(t.nbytes for t in transfers if t.kind is TransferKind.weights), kv_bytes=kv_bytes,
        kept_from=tuple(c for _, c in pairs), in_place_bytes=in_place,
    )


def _kv_pieces(src_cfg, src_devs, dst_cfg, dst_devs, L, ukv) -> list[tuple[float, int, int, Shard]]:
    """(bytes per context token, src device, dst device, cell) of a request's KV moving between two replicas; the
    cells already on the right device are left out."""
    src_roles = list(zip(src_devs, replica_roles(L, src_cfg.tp, src_cfg.pp)))
    out = []
    for d, role in zip(dst_devs, replica_roles(L, dst_cfg.tp, dst_cfg.pp)):
        for cell in grid_cells(role, [r for _, r in src_roles]):
            s = next(s for s, r in src_roles if r.contains(cell))
            per_token = shard_bytes(cell, ukv)
            if s != d and per_token > 0:
                out.append((per_token, s, d, cell))
    return out


def _plan_kv(current, tgt, model, cluster, inflight, options, kept, ready, links, transfers):
    if not inflight:
        return [], 0.0
    L, ukv = model.num_layers, unit_kv_bytes(model)

    def buffer(tokens: int) -> int:
        return math.ceil(tokens * (1 + options.kv_headroom))

    cap = [options.kv_capacity_tokens if options.kv_capacity_tokens is not None
           else max(kv_capacity_tokens(model, cluster, cfg, DEFAULT_PARAMS), 0) for cfg in tgt.replicas]
    used = [0] * len(tgt.replicas)
    staying = {c: k for k, c in kept.items()}
    for r in inflight:
        if r.replica in staying:
            used[staying[r.replica]] += buffer(r.context_tokens)
    actions, total = [], 0.0
    geometry = {}  # (current k, target k) -> _kv_pieces: the same for every request of the pair
    for r in sorted((r for r in inflight if r.replica not in staying), key=lambda r: (-r.context_tokens, r.id)):
        src_cfg, src_devs = current.replicas[r.replica], current.devices[r.replica]
        need = buffer(r.context_tokens)
        best = None
        if r.context_tokens >= options.kv_move_min_tokens:
            for k, (cfg, devs) in enumerate(zip(tgt.replicas, tgt.devices)):
                if cap[k] - used[k] < need:
                    continue
                if (r.replica, k) not in geometry:
                    geometry[r.replica, k] = _kv_pieces(src_cfg, src_devs, cfg, devs, L, ukv)
                pieces = [(b * r.context_tokens, s, d, cell) for b, s, d, cell in geometry[r.replica, k]]
                est = max([ready[k]] + [links.when(s, d, b)[1] for b, s, d, _ in pieces])
                # NVLink before the network, as for weights: a replica reached inside the node(s) wins.
                crosses = any(cluster.node_of(s) != cluster.node_of(d) for _, s, d, _ in pieces)
                if best is None or (crosses, est, k) < best[0]:
                    best = ((crosses, est, k), k, pieces)
        if best is None:
            actions.append(KVAction(r.id, False, r.replica, None, 0.0))
            continue
        _, k, pieces = best
        used[k] += need
        end = ready[k]
        for nbytes, s, d, cell in sorted(pieces, key=lambda p: (-p[0], p[2])):
            start, stop = links.book(s, d, nbytes)
            transfers.append(Transfer(TransferKind.kv, s, d, nbytes, start, stop, k,
                                      f"kv of request {r.id}: {describe(cell, L)}", cell, r.id))
            total += nbytes
            end = max(end, stop)
        actions.append(KVAction(r.id, True, r.replica, k, end, need))
    actions.sort(key=lambda a: a.request)
    return actions, total


def cold_reload_s(target: DeploymentPlan, model: ModelSpec, cluster: ClusterSpec,
                  options: SwitchOptions | None = None) -> float:
    """Seconds a cold reload of the whole target takes (what vLLM pays to re-deploy: every engine restarts): each
    node reads its devices' shards from storage at storage_bw, then the engines start (options.engine_startup_s)."""
    options = SwitchOptions() if options is None else options
    if not target.replicas:
        return 0.0
    return plan_switch(None, target, model, cluster, options=dataclasses.replace(options, rebuild_s=0.0)).total_s \
        + options.engine_startup_s
