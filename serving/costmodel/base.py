"""`CostModel`: one IterationCost per replica config (TP, PP) of a model on a cluster, and the configs that hold it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from common.topology import ClusterSpec
from serving.costmodel.iteration import IterationCost, ReplicaConfig
from serving.costmodel.measured import MeasuredTable, measured_cost, supported_tps
from serving.costmodel.models import ModelSpec
from serving.costmodel.roofline import RooflineParams, roofline_cost


class CostModelKind(Enum):
    """Where iteration latencies come from. Member names are lower case because OmegaConf matches a config value to
    the member's name, and users type `oserve.costmodel=measured`."""

    measured = "measured"  # (a) the Splitwise table, interpolated (measured.py)
    roofline = "roofline"  # (b) analytic, any model (roofline.py)


@dataclass
class CostModel:
    model: ModelSpec  # the served model
    cluster: ClusterSpec  # hardware and links
    kind: CostModelKind = CostModelKind.roofline  # (a) or (b)
    table: MeasuredTable | None = None  # required for kind measured
    params: RooflineParams = RooflineParams()  # memory sizing (both) and efficiencies (roofline)
    max_model_len: int = 8192  # longest request (prompt + output) a replica must hold alone
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not isinstance(self.kind, CostModelKind):
            raise ValueError(f"CostModel.kind: {self.kind!r} is not a CostModelKind; use one of "
                             f"{[k.name for k in CostModelKind]}")
        if self.kind is CostModelKind.measured and self.table is None:
            raise ValueError("cost model 'measured' needs the perf table (costmodel.perf_table)")

    def cost(self, config: ReplicaConfig) -> IterationCost:
        if config not in self._cache:
            if self.kind is CostModelKind.measured:
                c = measured_cost(self.table, self.model, self.cluster, config, self.params)
            else:
                c = roofline_cost(self.model, self.cluster, config, self.params)
            self._cache[config] = c
        return self._cache[config]

    def fits(self, config: ReplicaConfig) -> bool:
        return self.cost(config).kv_capacity_tokens >= self.max_model_len

    def configs(self, gpus: int) -> list[ReplicaConfig]:
        """Every (tp, pp) with tp * pp == gpus that the cost model covers and that holds the model."""
        tps = [t for t in range(1, self.cluster.devices_per_node + 1) if gpus % t == 0]
        if self.kind is CostModelKind.measured:
            tps = [t for t in tps if t in supported_tps(self.table, self.model, self.cluster)]
        out = []
        for tp in tps:
            cfg = ReplicaConfig(tp, gpus // tp)
            if cfg.pp > 1 and gpus > self.cluster.devices_per_node and gpus % self.cluster.devices_per_node:
                continue
            if self.fits(cfg):
                out.append(cfg)
        return out

    def min_gpus(self) -> int:
        """Fewest GPUs (a power of two) any replica needs; a clear error when even the whole cluster is too small."""
        g = 1
        while g <= self.cluster.num_devices:
            if self.configs(g):
                return g
            g *= 2
        raise ValueError(
            f"model {self.model.name} ({self.model.weight_bytes / 1e9:.0f} GB of weights, max_model_len "
            f"{self.max_model_len}) does not fit on {self.cluster.num_devices} x {self.cluster.device.name}"
            + (f" with the measured TPs {supported_tps(self.table, self.model, self.cluster)}"
               if self.kind is CostModelKind.measured else ""))
