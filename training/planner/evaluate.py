"""Applying a plan made from one window of loads to the loads of a later micro-batch (what the runtime does).

Notation: N devices, E experts, G devices per node.
"""

from __future__ import annotations

import numpy as np

from training.planner.base import Plan
from training.planner.objective import PlanObjective
from training.rounding import largest_remainder
from training.routing import fsep_routing, fsep_summary, traffic_summary


def quota_routing(plan: Plan, loads: np.ndarray, devices_per_node: int) -> np.ndarray:
    """[N, E, N] routing of new loads that follows the plan's routing as per-(source, expert) fractions; pairs the plan
    saw no tokens for fall back to the FSEP rule. Integer by largest remainder per pair."""
    loads = np.asarray(loads, dtype=np.int64)
    old = plan.routing
    old_tot = old.sum(2, keepdims=True)
    routing_fractions = np.where(old_tot > 0, old / np.maximum(old_tot, 1), 0.0)  # [N, E, N]
    routing = largest_remainder(loads[:, :, None] * routing_fractions, loads)
    missing = old_tot[:, :, 0] == 0
    if missing.any():
        fallback = fsep_routing(np.where(missing, loads, 0), plan.layout, devices_per_node)
        routing = np.where(missing[:, :, None], fallback, routing)
    return routing


def evaluate(plan: Plan, loads: np.ndarray, devices_per_node: int, objective: PlanObjective
             ) -> tuple[np.ndarray, float]:
    """(device_tokens [N], estimated layer time) of `plan` applied to `loads` [N, E]."""
    loads = np.asarray(loads, dtype=np.int64)
    if plan.fsep_routed:
        tokens, intra, inter = fsep_summary(loads, plan.layout, devices_per_node)
    else:
        tokens, intra, inter = traffic_summary(quota_routing(plan, loads, devices_per_node), devices_per_node)
    return tokens, objective.objective(tokens, intra, inter)
