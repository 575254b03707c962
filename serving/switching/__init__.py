"""OServe's switch planner: from the current deployment to the target, which parameter shards and KV caches move
between devices (or load from storage), in what order and when (pure: numbers in, a frozen SwitchPlan out).

Glossary: a *shard* is a rectangle of the model (a range of units, i.e. embedding / layers / LM head, by a share of
their columns, i.e. a TP slice); a *piece* is the part of a shard a target device needs that one current device holds
whole; a replica is *kept* when the target has one of the same (tp, pp) on the same devices (no transfer); a request
*drains* when it finishes on its old replica and *moves* when its KV is copied to a target replica.
"""

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
from serving.switching.planner import cold_reload_s, plan_switch

__all__ = ["STORAGE", "InflightRequest", "KVAction", "Shard", "SwitchOptions", "SwitchPlan", "Transfer",
           "TransferKind", "cold_reload_s", "plan_switch"]
