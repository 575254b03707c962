"""Serving cost model: per replica configuration, iteration latencies and KV-cache capacity.

(a) measured: the Splitwise latency table, interpolated (measured.py);  (b) roofline: analytic, any model (roofline.py).
`CostModel` (base.py) caches one IterationCost per (tp, pp) and lists the configs that fit a model on a cluster.
"""

from serving.costmodel.base import CostModel, CostModelKind
from serving.costmodel.iteration import IterationCost, ReplicaConfig, TypeCapacity, type_capacity
from serving.costmodel.measured import MeasuredTable, load_perf_table
from serving.costmodel.models import MODELS, ModelSpec, get_model
from serving.costmodel.roofline import RooflineParams

__all__ = [
    "CostModel", "CostModelKind", "IterationCost", "ReplicaConfig", "TypeCapacity", "type_capacity", "MeasuredTable",
    "load_perf_table", "MODELS", "ModelSpec", "get_model", "RooflineParams",
]
