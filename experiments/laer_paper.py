"""The LAER-MoE paper's experimental setup and its own result CSVs (the authors' artifact in
`laer_moe_paper_results/`), shared by the simulated figures (`laer/fig8`, `fig10`, `fig12`) and `make run`.

Setup (from the artifact's scripts, see the data README): 4 nodes x 8 A100-80GB, global batch 128 sequences of 8192
tokens, 2 micro-batches per iteration; C = 2 slots per device for the top-2 (e8k2) models, 4 for the top-4 (e16k4).
Method names: the CSVs' (megatron, FSDP, FLEX, LAER) are our simulator's systems (megatron_ep, fsdp_ep, flexmoe, laer).
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from common.costmodel import ComputeModel
from common.datapaths import Fallback, ensure_files, locate_data_dir
from common.topology import PRESETS, ClusterSpec
from common.traces import ExpertLoadTrace
from training.model import ModelConfig, model_config
from training.planner.flexmoe import FlexMoE
from training.sim import Prefetch, SimResult, get_system, simulate_iteration, trace_loads
from training.sim.calibration import PAPER, Calibration

CONF_MODELS = Path(__file__).resolve().parents[1] / "conf" / "model"
log = logging.getLogger(__name__)

RESULTS_DIR = "laer_moe_paper_results"  # relative to paths.data_dir

# Paper model name -> conf/model file stem.
MODELS = {
    "mixtral-8x7b-e8k2": "mixtral_8x7b_e8k2",
    "mixtral-8x7b-e16k4": "mixtral_8x7b_e16k4",
    "mixtral-8x22b-e8k2": "mixtral_8x22b_e8k2",
    "mixtral-8x22b-e16k4": "mixtral_8x22b_e16k4",
    "qwen-8x7b-e8k2": "qwen_8x7b_e8k2",
    "qwen-8x7b-e16k4": "qwen_8x7b_e16k4",
}
# CSV method name -> training.sim.SystemName value.
METHODS = {"megatron": "megatron_ep", "FSDP": "fsdp_ep", "FLEX": "flexmoe", "LAER": "laer"}
DATASETS = ("C4", "wikitext")
AUX_LOSSES = (0.0, 0.0001)


@dataclass(frozen=True)
class PaperRun:
    """One training iteration of the paper's runs."""

    global_batch: int = 128  # sequences per iteration
    seq_len: int = 8192
    microbatches: int = 2
    cluster: str = "a100_80g_4x8"  # common.topology preset

    def tokens_per_device(self, num_devices: int) -> int:
        """Tokens one device feeds into each micro-batch."""
        total = self.global_batch * self.seq_len
        if total % (num_devices * self.microbatches):
            raise ValueError(f"{total} tokens do not split over {num_devices} devices x {self.microbatches} micro-batches")
        return total // (num_devices * self.microbatches)


def paper_model(name: str) -> ModelConfig:
    """The paper's model by its CSV name (conf/model/<stem>.yaml)."""
    if name not in MODELS:
        raise ValueError(f"unknown paper model {name!r}; known: {sorted(MODELS)}")
    return model_config(OmegaConf.to_container(OmegaConf.load(CONF_MODELS / f"{MODELS[name]}.yaml")))


def paper_slots(model: ModelConfig) -> int:
    """C the paper runs the model at: 2 for top-2, 4 for top-4."""
    return {2: 2, 4: 4}[model.top_k]


def paper_cluster(run: PaperRun = PaperRun()) -> ClusterSpec:
    """The run's preset with the paper's shared node NICs (training.sim.calibration.PAPER)."""
    return PAPER.cluster(PRESETS[run.cluster]())


def paper_compute(cluster: ClusterSpec) -> ComputeModel:
    """The compute model every simulated paper figure uses (training.sim.calibration says where it comes from)."""
    return PAPER.compute(cluster)


def trace_samples(trace: ExpertLoadTrace, count: int) -> list[int]:
    """`count` trace samples spread evenly over training, each with an earlier sample to plan from."""
    if count < 1:
        raise ValueError(f"samples must be >= 1, got {count}")
    return sorted({int(i) for i in np.linspace(1, trace.num_iterations - 1, count).round()})


def simulate(model: ModelConfig, system: str, trace: ExpertLoadTrace, samples: list[int], run: PaperRun = PaperRun(),
             slots: int | None = None, comm_opt: bool = True, planner_options: dict | None = None,
             cluster: ClusterSpec | None = None, compute: ComputeModel | None = None,
             calibration: Calibration | None = None, prefetch: Prefetch = Prefetch.layer) -> list[SimResult]:
    """One simulated iteration of `model` under `system` per trace sample: loads are the sample rescaled to the model
    (`training.sim.trace_loads`, micro-batch 0 for every micro-batch), planned from the sample before it (the
    runtime plans from loads it has already seen; the trace keeps every 10th iteration); FlexMoE's plan starts from
    the layout its run would have by then (`carried_layouts`), the others' from scratch. calibration: a
    `training.sim.calibration.Calibration` (default PAPER: recompute per system, flash attention and memory-bound
    work, shared node NICs, GEMM efficiency); an explicit cluster / compute overrides its cluster / compute.
    comm_opt / prefetch: `training.sim.simulate_iteration`'s (prefetch=Prefetch.unit is the paper's no_comm_opt)."""
    calibration = calibration or PAPER
    cluster = cluster or calibration.cluster(PRESETS[run.cluster]())
    compute = compute or calibration.compute(cluster)
    recompute = get_system(system).name in calibration.recompute
    n = cluster.num_devices
    ep = calibration.ep_degree  # where it does not divide N and E (a resized cluster), Megatron's default min(N, E)
    ep = ep if ep and n % ep == 0 and model.num_experts % ep == 0 else None
    tpd = run.tokens_per_device(n)
    c = slots or paper_slots(model)
    carried = get_system(system).planner == FlexMoE.name
    out = []
    for s in samples:
        loads = trace_loads(trace, n, model.num_layers, model.num_experts, model.top_k, tpd, s)
        before = trace_loads(trace, n, model.num_layers, model.num_experts, model.top_k, tpd, s - 1)
        options = planner_options
        if carried:
            start = carried_layouts(model, trace, s, n, c, cluster.devices_per_node, tpd, planner_options)
            options = [{**(planner_options or {}), "start": layer} for layer in start]
        out.append(simulate_iteration(model, cluster, system, loads, c, compute,
                                      comm_opt=comm_opt, recompute=recompute, microbatches=run.microbatches,
                                      seq_len=run.seq_len, plan_loads=before, planner_options=options,
                                      non_expert=calibration.non_expert, ep_degree=ep, prefetch=prefetch))
    return out


# FlexMoE's layout persists and the runtime re-plans it every iteration (Galvatron's dispatcher hands the solver its
# current placement each step); the trace keeps every 10th iteration, so each sample stands for 10 re-plans.
FLEX_REPLANS_PER_SAMPLE = 10
# Samples of re-planning (from the static layout) before a simulated iteration: on mixtral-8x7b-e8k2 the mean
# max/mean tokens settles (1.84 static -> 1.70) within about 10 samples and holds over 60, so an older start adds little.
FLEX_WARMUP_SAMPLES = 10


def carried_layouts(model: ModelConfig, trace: ExpertLoadTrace, sample: int, n: int, c: int, g: int, tpd: int,
                    planner_options: dict | None = None, warmup: int = FLEX_WARMUP_SAMPLES,
                    replans: int = FLEX_REPLANS_PER_SAMPLE) -> np.ndarray:
    """FlexMoE's per-layer layouts [L, N, C] just before the re-plan `simulate` makes from sample - 1: the static
    layout re-planned `replans` times on each of the `warmup` samples before that (the last of them one time less:
    `simulate_iteration` makes that re-plan). The moves need only the routed tokens, so the default objective."""
    planner = FlexMoE(n, c, g, **{k: v for k, v in (planner_options or {}).items() if k == "max_moves"})
    layouts = [planner.static_layout(model.num_experts)] * model.num_layers
    for t in range(max(0, sample - warmup), sample):
        loads = trace_loads(trace, n, model.num_layers, model.num_experts, model.top_k, tpd, t)
        for _ in range(replans - (t == sample - 1)):
            moved = [planner.step(x, y).layout.slots for x, y in zip(loads, layouts)]
            if all(np.array_equal(a, b) for a, b in zip(moved, layouts)):
                break  # a re-plan on the same loads from the same layout repeats itself
            layouts = moved
    return np.stack(layouts)


def paper_csv(cfg, name: str) -> Path | None:
    """One of the paper's result CSVs (`name` relative to paths.data_dir), fetched when missing unless paths.fallback
    is none; else None and one warning naming it: the paper columns then stay empty (there is never a stand-in for
    the paper's numbers)."""
    fallback = Fallback.none if Fallback(cfg.paths.fallback) is Fallback.none else Fallback.download
    try:
        return ensure_files(locate_data_dir(cfg.paths.data_dir, os.environ), [name], fallback).path(name)
    except FileNotFoundError as e:
        log.warning("paper results %s not found, the paper columns stay empty: %s", name, e)
        return None


def _rows(path: Path, columns: tuple[str, ...]) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}:1: missing column(s) {missing}; expected {list(columns)}")
        return list(reader)


def _num(path: Path, line: int, row: dict, key: str, kind=float):
    try:
        return kind(row[key])
    except (TypeError, ValueError):
        raise ValueError(f"{path}:{line}: column {key!r} is not a number: {row[key]!r}") from None


def read_e2e(path: Path) -> dict[tuple[str, str, float, str], float]:
    """Fig. 8: (dataset, model, aux_loss, system) -> mean iteration seconds."""
    out = {}
    for line, r in enumerate(_rows(path, ("dataset", "method", "model_name", "aux_loss", "avg_time_ms")), start=2):
        key = (r["dataset"], r["model_name"], _num(path, line, r, "aux_loss"), METHODS.get(r["method"], r["method"]))
        out[key] = _num(path, line, r, "avg_time_ms") / 1e3
    return out


def read_breakdown(path: Path) -> dict[tuple[str, str], list[tuple[int, float, float, float]]]:
    """Fig. 10a: (model, system) -> per rank (rank, all-to-all s, expert s, total s)."""
    out: dict[tuple[str, str], list] = {}
    cols = ("rank", "model_name", "method", "alltoall_time", "expert_time", "total_time")
    for line, r in enumerate(_rows(path, cols), start=2):
        out.setdefault((r["model_name"], METHODS.get(r["method"], r["method"])), []).append(
            (_num(path, line, r, "rank", int), _num(path, line, r, "alltoall_time"),
             _num(path, line, r, "expert_time"), _num(path, line, r, "total_time")))
    return {k: sorted(v) for k, v in out.items()}


def read_tokens(path: Path) -> dict[tuple[str, str], dict[tuple[int, int, int], int]]:
    """Fig. 10b: (model, system) -> {(iteration, layer, rank): tokens the rank computed}."""
    out: dict[tuple[str, str], dict] = {}
    for line, r in enumerate(_rows(path, ("rank", "method", "model_name", "layer", "iter", "token_num")), start=2):
        key = (r["model_name"], METHODS.get(r["method"], r["method"]))
        out.setdefault(key, {})[(_num(path, line, r, "iter", int), _num(path, line, r, "layer", int),
                                 _num(path, line, r, "rank", int))] = _num(path, line, r, "token_num", int)
    return out


def read_ablation(path: Path) -> dict[str, float]:
    """Fig. 12: variant (FSDP, LAER, no_comm_opt, no_even) -> mean iteration seconds."""
    return {r["method"]: _num(path, line, r, "avg_time_ms") / 1e3
            for line, r in enumerate(_rows(path, ("method", "avg_time_ms")), start=2)}
