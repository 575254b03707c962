"""Switch cost: total switch time of representative parallelism changes beside a cold reload from storage (the
vllm_reload baseline's cost), and beside the OServe paper's bound (switches under 10 s for 70B-class models).

Each case packs its current and target replicas on devices from 0, largest first (as the scheduler lays them out);
each current replica carries `inflight_per_replica` requests with context lengths uniform in `context_tokens`, so the
KV of the long ones moves. Columns: weights moved / in place / read from storage, when the weights are all in place
(weights_s), when the target serves (ready_s: every rebuilt replica ready), when the last KV move lands (total_s),
the cold reload (storage read + vLLM engine start-up), and ready_restart_s: ready_s if every rebuilt replica also
paid a full engine start-up (options.engine_startup_s) on top of its transfers, a pessimistic bound.
Writes switch_cost.csv and switch_cost.png. Times are modelled, not measured; the planner's CPU time is listed.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from common.topology import get_cluster
from experiments import plotting
from serving.costmodel.iteration import ReplicaConfig
from serving.costmodel.models import get_model
from serving.scheduler.plan import DeploymentPlan
from serving.switching import STORAGE, InflightRequest, SwitchOptions, TransferKind, cold_reload_s, plan_switch

log = logging.getLogger(__name__)


def packed_plan(pairs, key: str) -> DeploymentPlan:
    """A plan of [tp, pp] replicas on consecutive devices, largest first (dispatch and rates are placeholders: the
    switch planner reads only the replicas and their devices)."""
    try:
        cfgs = sorted((ReplicaConfig(int(tp), int(pp)) for tp, pp in pairs), key=lambda c: -c.gpus)
    except (TypeError, ValueError):
        raise ValueError(f"{key}: expected a list of [tp, pp] pairs, got {pairs}") from None
    devs, nxt = [], 0
    for c in cfgs:
        devs.append(tuple(range(nxt, nxt + c.gpus)))
        nxt += c.gpus
    k = len(cfgs)
    return DeploymentPlan(tuple(cfgs), tuple(devs), ((1.0,),) * k, (1.0,), 1.0, 0.0, (0.0,) * k, "switch_cost")


def run(cfg: DictConfig, out_dir: Path) -> dict:
    sc = cfg.switch_cost
    model = get_model(sc.model)
    cluster = get_cluster(cfg.cluster.preset, cfg.cluster.num_nodes, cfg.cluster.devices_per_node)
    options = SwitchOptions(**OmegaConf.to_container(sc.options))
    restart = dataclasses.replace(options, rebuild_s=options.engine_startup_s)
    lo, hi = (int(x) for x in sc.context_tokens)
    if not 0 <= lo <= hi:
        raise ValueError(f"switch_cost.context_tokens: expected [low, high] with 0 <= low <= high, got {[lo, hi]}")
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for i, case in enumerate(sc.cases):
        cur = packed_plan(case.current, f"switch_cost.cases[{i}].current")
        tgt = packed_plan(case.target, f"switch_cost.cases[{i}].target")
        inflight = [InflightRequest(k * sc.inflight_per_replica + j, k, int(rng.integers(lo, hi + 1)), 64)
                    for k in range(len(cur.replicas)) for j in range(sc.inflight_per_replica)]
        t0 = time.process_time()
        sp = plan_switch(cur, tgt, model, cluster, inflight, options)
        cpu_s = time.process_time() - t0
        weights = [t for t in sp.transfers if t.kind is TransferKind.weights]
        cold = cold_reload_s(tgt, model, cluster, options)
        ready_restart = plan_switch(cur, tgt, model, cluster, inflight, restart).ready_s
        rows.append({
            "switch": f"{cur.describe()} -> {tgt.describe()}",
            "kept": len(sp.kept), "rebuilt": len(tgt.replicas) - len(sp.kept),
            "moved_gb": sum(t.nbytes for t in weights if t.src != STORAGE) / 1e9,
            "in_place_gb": sp.in_place_bytes / 1e9,
            "storage_gb": sum(t.nbytes for t in weights if t.src == STORAGE) / 1e9,
            "inter_node_gb": sum(t.nbytes for t in sp.transfers if t.src != STORAGE
                                 and cluster.node_of(t.src) != cluster.node_of(t.dst)) / 1e9,
            "transfers": len(sp.transfers),
            "kv_moved": sum(a.move for a in sp.kv), "kv_drained": sum(not a.move for a in sp.kv),
            "kv_gb": sp.kv_bytes / 1e9,
            "weights_s": max((t.end_s for t in weights), default=0.0),
            "ready_s": sp.ready_s, "total_s": sp.total_s,
            "ready_restart_s": ready_restart,
            "cold_reload_s": cold,
            "speedup_vs_reload": cold / max(sp.total_s, 1e-9),
            "under_paper_bound": sp.total_s < sc.paper_bound_s,
            "planner_cpu_s": cpu_s,
        })
        log.info("%-46s total %.3f s (weights %.3f s, %d KV moves %.1f GB), cold reload %.1f s",
                 rows[-1]["switch"], sp.total_s, rows[-1]["weights_s"], rows[-1]["kv_moved"], rows[-1]["kv_gb"], cold)

    csv_path = out_dir / "switch_cost.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in r.items()})
    settings = {"model": sc.model, "cluster": cluster.name, "storage": f"{(options.storage_bw or cluster.storage_bw) / 1e9:g} GB/s/node",
                "in flight": f"{sc.inflight_per_replica}/replica"}
    fig, axes = plotting.figure(1, 1, "Switch time vs cold reload", settings,
                                panel_size=(10.0, 0.5 * len(rows) + 1.6))
    ax, y = axes[0][0], np.arange(len(rows))[::-1]
    ax.barh(y + 0.27, [r["total_s"] for r in rows], 0.27, label="switch (ours: transfers)")
    ax.barh(y, [r["ready_restart_s"] for r in rows], 0.27, label="switch + engine restart per rebuilt replica")
    ax.barh(y - 0.27, [r["cold_reload_s"] for r in rows], 0.27, label="cold reload from storage (vllm_reload)")
    ax.axvline(sc.paper_bound_s, color="gray", linewidth=0.8, linestyle="--", label=f"paper: under {sc.paper_bound_s:g} s")
    ax.set_xscale("log")
    ax.set_yticks(y, [r["switch"] for r in rows], fontsize=8)
    ax.set_xlabel("seconds (log)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8)
    png = plotting.save(fig, out_dir / "switch_cost.png")

    head = f"{'switch':46s} {'moved GB':>8s} {'in place':>8s} {'KV GB':>6s} {'weights s':>9s} {'total s':>8s} " \
           f"{'+restart s':>10s} {'reload s':>8s} {'paper':>7s}"
    lines = [f"Switch cost ({sc.model} on {cluster.name}; paper: switches under {sc.paper_bound_s:g} s)", head]
    for r in rows:
        lines.append(f"{r['switch']:46s} {r['moved_gb']:8.1f} {r['in_place_gb']:8.1f} {r['kv_gb']:6.1f} "
                     f"{r['weights_s']:9.3f} {r['total_s']:8.3f} {r['ready_restart_s']:10.1f} "
                     f"{r['cold_reload_s']:8.1f} {'< ' if r['under_paper_bound'] else '>= '}{sc.paper_bound_s:g}")
    print("\n".join(lines))
    log.info("wrote %s and %s", csv_path, png)
    return {
        "rows": rows, "paper_bound_s": float(sc.paper_bound_s),
        "max_total_s": max(r["total_s"] for r in rows), "min_cold_reload_s": min(r["cold_reload_s"] for r in rows),
        "all_under_paper_bound": all(r["under_paper_bound"] for r in rows),
        "files": [str(csv_path), str(png)],
    }
