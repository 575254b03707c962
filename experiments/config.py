"""Structured config schemas registered with Hydra's ConfigStore, so a wrong key, type or choice fails when the config
is built, with Hydra's message naming the key.

Every experiment has its own schema: `ExperimentConfig` (task, seed, paths) plus only the sections that experiment
reads, so a key of another experiment is rejected instead of silently ignored. An experiment file
`conf/experiment/<name>.yaml` pulls its schema with `- /schema/<task>@_global_` in its defaults list; `SCHEMAS` below
maps each task to it. Library code never sees these: entry points turn them into the libraries' own dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from common.datapaths import Fallback
from common.topology import ClusterPreset
from common.traces import TraceFormat
from serving.control import ControllerConfig
from serving.costmodel import CostModelKind
from serving.engines.config import EngineConfig
from serving.engines.profile import ProfileGrid
from serving.loadgen import LoadSpec
from serving.predict import LSTMOptions, PredictorKind
from serving.scheduler import SchedulerConfig
from serving.sim import SLO, Dispatcher, ReplayObjective, SchedulingPolicy
from serving.switching import SwitchOptions
from training.train_config import DataConfig, Parallel, PlannerConfig, TrainerConfig


def require(ok: bool, key: str, what: str, value) -> None:
    """The one-line error for a value the schema's types cannot rule out: `config key '<key>' <what>, got <value>`."""
    if not ok:
        raise ValueError(f"config key '{key}' {what}, got {value}")


@dataclass
class PathsConfig:
    # Where the real traces live (wins over $LOADWISE_DATA_DIR). null: $LOADWISE_DATA_DIR, else ../shared/data beside
    # the checkout, else ./data.
    data_dir: Optional[str] = None
    # When a data file is missing: none (stop and say how to get it), download (fetch the public original, else
    # stop) or synthetic (fetch it, else run on a synthetic stand-in with a loud warning). The paper studies keep
    # download; repro (`make run`) and quickstart set synthetic so a fresh clone without network still runs.
    fallback: Fallback = Fallback.download
    # Profile loaded by the `local_cpu` cluster preset and the cost models (null: common/profiles/local_cpu.json).
    profile: Optional[str] = None


@dataclass
class ClusterConfig:
    # A name from common.topology.PRESETS.
    preset: ClusterPreset = ClusterPreset.a100_80g_4x8
    # Resize the preset (same hardware): null keeps the preset's shape.
    num_nodes: Optional[int] = None
    devices_per_node: Optional[int] = None


@dataclass
class QuickstartConfig:
    # Expert-load trace, relative to paths.data_dir.
    expert_trace: str = "smartmoe_expert_trace/smartmoe_counts.npz"
    # Request trace (Azure 2023 format), relative to paths.data_dir.
    request_trace: str = "azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv"
    # Request types found by k-means over (log input, log output).
    num_request_types: int = 4
    # Bin width for request rates, seconds.
    interval_s: float = 60.0
    seed: int = 0


@dataclass
class WorkloadConfig:
    # Request trace: a path relative to paths.data_dir (or absolute).
    trace_path: str = "azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv"
    # Its format: azure, mooncake or csv.
    format: TraceFormat = TraceFormat.azure
    # Multiply the trace's arrival rate by this (>1: more requests per second).
    rate_scale: float = 1.0
    # Keep only the first this many requests (null: all); tiny runs in tests.
    max_requests: Optional[int] = None
    # Request types found by k-means over (log input, log output).
    num_types: int = 4


@dataclass
class OServeHeatmapConfig:
    # Where heterogeneity pays: P99 ratios OServe / best_static and OServe / vllm_fixed on synthetic mixes of short
    # (workload.trace_path) and long (long_pool) requests, over these axes. Empty long_shares: no heatmap.
    long_shares: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.6])
    # Request rate as a share of what the best homogeneous deployment serves of that mix (its LP capacity).
    loads: list[float] = field(default_factory=lambda: [0.5, 0.8])
    # SLO scale: multiplies oserve.slo (ttft_s and tpot_s) and the capacity estimate's TPOT target.
    slo_scales: list[float] = field(default_factory=lambda: [1.0, 2.0])
    # Requests per cell, and the arrival process: gamma inter-arrivals of this CV (1 = Poisson, > 1 bursty).
    requests: int = 1500
    burst_cv: float = 2.0
    # GPUs per cell (null: num_gpus).
    gpus: Optional[int] = 16


@dataclass
class OServeConfig:
    # Served model: a name from serving.costmodel.models.MODELS (oserve.model, since `model=` selects the MoE
    # training model's config group).
    model: str = "llama2-70b"
    # Cost model: measured (Splitwise table + roofline context terms) or roofline (analytic, any model).
    costmodel: CostModelKind = CostModelKind.measured
    # The measured table, relative to paths.data_dir.
    perf_table: str = "splitwise_sim_perf_model/perf_model.csv"
    # Long requests (lengths only) for the arxiv_mix trace and the heatmap, relative to paths.data_dir.
    long_pool: str = "sharegpt_arxiv_length_stats/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"
    # Longest request (prompt + output) a replica must hold; longer prompts are cut.
    max_model_len: int = 8192
    # Extra traces compared beside workload.trace_path ("mix" = it merged with the first extra trace; "arxiv_mix" =
    # its arrivals with arxiv_share of the requests' lengths drawn from long_pool).
    extra_traces: list[str] = field(
        default_factory=lambda: ["azure_llm_inference_2023/AzureLLMInferenceTrace_code.csv", "mix", "arxiv_mix"])
    arxiv_share: float = 0.2
    # GPU counts of the comparison grid (num_gpus is the headline one).
    gpu_counts: list[int] = field(default_factory=lambda: [8, 16, 32])
    # Request-rate points (x workload.rate_scale x num_gpus / 8, so the load per GPU is alike at every size).
    rate_points: list[float] = field(default_factory=lambda: [1.0])
    # Spatial-sensitivity sweep: share of long requests mixed into short ones (0 = short only).
    sensitivity_mix: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.25, 0.5])
    # Requests per sensitivity point.
    sensitivity_requests: int = 4000
    # SLO a request meets (serving.sim.SLO): slo.ttft_s time to first token, slo.tpot_s time per output token.
    # With capacity simulated, a profiled rate must keep P90 TTFT within slo.ttft_s / 2.
    slo: SLO = field(default_factory=SLO)
    # The two-level scheduler (serving.scheduler.SchedulerConfig): scheduler.patience, scheduler.tie_break
    # (latency or balance), scheduler.headroom, scheduler.tpot_target_s, scheduler.capacity (analytic or simulated),
    # scheduler.finalists (LP-best deployments scored by a simulated replay), scheduler.max_batched_tokens (also
    # the simulated engines' max_num_batched_tokens).
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    # The finalists' replay: the busiest replay_s seconds of the workload, scored by replay_objective (p99 or
    # goodput). replay_s 0: no replay, the LP's best is the plan.
    replay_s: float = 60.0
    replay_objective: ReplayObjective = ReplayObjective.p99
    # How OServe routes: affinity (the plan's types + fewest outstanding tokens) or plan (fixed x_kj split).
    dispatch: Dispatcher = Dispatcher.affinity
    # The simulated engines' scheduling: v1 (vLLM V1, chunked prefill) or v0 (prefill first).
    scheduling: SchedulingPolicy = SchedulingPolicy.v1
    # best_static is the homogeneous deployment with the lowest simulated P99 among this many best by the LP
    # (0: all of them; each is a full-trace simulation).
    static_candidates: int = 4
    # TPs of the fixed vLLM baselines (vllm_fixed_tp<N>: N_gpus / tp identical replicas, the paper's static vLLM).
    fixed_tps: list[int] = field(default_factory=lambda: [4, 8])
    # Plan for this quantile of the per-window type rates (null: the trace's mean rates), windows of
    # plan_rate_window_s seconds: a high quantile of short windows plans for the bursts an hour average hides.
    plan_rate_quantile: Optional[float] = 0.9
    plan_rate_window_s: float = 60.0
    heatmap: OServeHeatmapConfig = field(default_factory=OServeHeatmapConfig)


@dataclass
class OServeTemporalConfig:
    # Phase-shifting workloads, one per entry: phase p draws on cycle[p mod len(cycle)] (conv, code, arxiv,
    # sharegpt: serving.workload.PhaseSource names, checked when the run starts: OmegaConf cannot override a nested
    # list of Enums), mixed with the first source at `change` (0: the first source throughout; 1: whole slices).
    cycles: list[list[str]] = field(default_factory=lambda: [["conv", "code"], ["conv", "arxiv"]])
    num_phases: int = 4
    phase_s: float = 300.0
    change: float = 1.0
    # Temporal sensitivity: the first cycle at these changes (the headline's change is reused when listed).
    sensitivity_changes: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    # Each trace's rate: the best homogeneous deployment for each interval's own rates runs at this share of its LP
    # capacity (90th percentile over the intervals), so a deployment fixed for the whole trace must compromise.
    load: float = 1.1
    # Seconds a rebuilt replica re-initialises after its last shard lands (serving.switching.SwitchOptions.rebuild_s:
    # new NCCL groups, CUDA graphs).
    rebuild_s: float = 5.0
    # The sources, relative to paths.data_dir.
    conv_trace: str = "azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv"
    code_trace: str = "azure_llm_inference_2023/AzureLLMInferenceTrace_code.csv"
    arxiv_pool: str = "sharegpt_arxiv_length_stats/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"
    sharegpt_pool: str = "sharegpt_arxiv_length_stats/sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
    # A user trace instead of the phase-shifting ones (path, absolute or relative to paths.data_dir; its format is
    # workload.format, e.g. mooncake). null: the phase-shifting workloads.
    user_trace: Optional[str] = None
    # The predictor (serving.predict kinds: lstm, aggregate_lstm, moving_average, ema, seasonal_naive) and the
    # intervals of history it reads; it is trained on train_phases phases of the same sources from train_offset_s
    # on (wrapping round the hour-long Azure traces).
    predictor: PredictorKind = PredictorKind.lstm
    window: int = 6
    train_offset_s: float = 1800.0
    train_phases: int = 24
    # The Llumnix-style baseline: a migration round every this many seconds, moving requests while the busiest
    # replica's KV demand exceeds the idlest's by more than threshold x the mean, at most max_moves per round.
    migration_interval_s: float = 10.0
    migration_threshold: float = 0.25
    migration_max_moves: int = 8
    # P99 over time: bins of this many seconds.
    p99_bin_s: float = 60.0


class LoadKind(Enum):
    """Synthetic expert loads of the planner studies (`experiments.planner_speed.random_loads`)."""

    dirichlet = "dirichlet"  # the paper's Fig. 11 setting: each source its own Dirichlet(1) weights (near uniform)
    zipf = "zipf"  # skewed: expert popularity ~ 1 / rank^s over a random expert order, each source near it


@dataclass
class OServeBenchConfig:
    # The Azure conv hour (19,366 requests), relative to paths.data_dir: replayed for speed and for the peer check.
    trace_path: str = "azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv"
    # The measured cost table, relative to paths.data_dir.
    perf_table: str = "splitwise_sim_perf_model/perf_model.csv"
    # Served model for the speed runs (the peer check takes its model from the reference file).
    model: str = "llama2-70b"
    # Scheduler speed: GPU counts planned (H100 nodes of 8); brute force runs at the smallest for its optimality gap.
    scheduler_gpus: list[int] = field(default_factory=lambda: [8, 16, 32])
    # Conv-hour rate multiplier at the largest scheduler_gpus (scaled down with the GPU count).
    rate_scale: float = 4.0
    # Request types for the speed runs.
    num_types: int = 4
    # Keep only the first this many requests of each trace (null: all); tiny runs in tests.
    max_requests: Optional[int] = None
    # Peer numbers with their source and setting, relative to experiments/reference/ (or absolute).
    reference: str = "vidur.json"
    # Cost models replayed in the peer check.
    peer_costmodels: list[CostModelKind] = field(
        default_factory=lambda: [CostModelKind.measured, CostModelKind.roofline])


@dataclass
class OServePredictConfig:
    # Request traces (Azure 2023 CSV format), relative to paths.data_dir; each is scored on its own.
    traces: list[str] = field(default_factory=lambda: [
        "azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv",
        "azure_llm_inference_2023/AzureLLMInferenceTrace_code.csv"])
    # Request types per trace: k-means over (log input, log output) lengths (serving.workload.build_workload).
    num_types: int = 4
    # Bin sizes (s) of the per-type rate series (common.stats.type_rates); only full bins are kept.
    bins_s: list[float] = field(default_factory=lambda: [10.0, 30.0, 60.0])
    # Share of each series' intervals the predictors are fitted on (the head); the rest (the tail) is scored.
    head_share: float = 0.7
    # Intervals of history per forecast (the paper's sequence length 50). Where the head holds fewer than
    # window + min_train_pairs intervals (an hour gives 58 one-minute bins, 40 in a 70% head), it is clamped, with a
    # warning; fewer than ~30 pairs per type and the LSTM fits the noise.
    window: int = 50
    min_train_pairs: int = 30
    predictors: list[PredictorKind] = field(default_factory=lambda: list(PredictorKind))
    # Hyper-parameters of both LSTM predictors (serving.predict.LSTMOptions).
    lstm: LSTMOptions = field(default_factory=LSTMOptions)
    ema_alpha: float = 0.3
    # Seasonal-naive period in seconds (null: one window); clamped to the window.
    seasonal_period_s: Optional[float] = None


@dataclass
class PlannerQualityConfig:
    # Expert-load trace (SmartMoE npz), relative to paths.data_dir.
    expert_trace: str = "smartmoe_expert_trace/smartmoe_counts.npz"
    # Planners to compare (names in training.planner.PLANNERS; static_ep runs only where C = E / N). laer_plus runs
    # twice, told that the runtime routes by the FSEP rule or follows its quotas; wins and losses are counted against laer
    # (when it is in the list).
    algorithms: list[str] = field(default_factory=lambda: ["static_ep", "fsdp_ep", "laer", "laer_plus", "flexmoe", "eplb"])
    # Also run laer_plus with this time budget (its fast path; 1 ms: the paper's solve time at N = 64, C = 8) as
    # `laer_plus_fast`; null: not.
    fast_budget_s: Optional[float] = 0.001
    # Expert slots per device to sweep.
    slots: list[int] = field(default_factory=lambda: [2, 4, 8])
    # Devices per node (the trace's 16 source ranks become 16 / devices_per_node nodes).
    devices_per_node: int = 8
    # Plan from the sum of this many previous micro-batches (the paper's window), evaluate on the next one.
    window: int = 5
    # Replay every k-th sampled iteration / layer; 1 and 1 is the full trace (501 x 24 x 4 micro-batches).
    iteration_stride: int = 25
    layer_stride: int = 3
    # Larger clusters (devices_per_node per node): the trace with each of its source ranks split evenly over
    # N / ranks devices, and Zipf-skewed synthetic loads with each expert count; scale_instances samples per (N, C)
    # (trace: (iteration, layer) spread over the trace; Zipf: one random popularity each).
    scale_devices: list[int] = field(default_factory=lambda: [32, 64])
    scale_instances: int = 20
    zipf_experts: list[int] = field(default_factory=lambda: [32, 64])
    zipf_exponent: float = 1.0
    zipf_tokens_per_device: int = 4096
    # A planner wins (loses) against laer on an instance when its layer time is lower (higher) by more than this.
    tolerance: float = 0.005
    # Expert shape for the cost model (token bytes 2*H, SwiGLU compute per token).
    hidden: int = 4096
    ffn: int = 14336
    recompute: bool = False
    # The exact MILP is the oracle on small instances cut from the trace: sources merged to milp_devices devices
    # (milp_devices_per_node per node), experts merged in consecutive groups to milp_experts, one micro-batch each.
    milp_instances: int = 20
    milp_devices: int = 4
    milp_devices_per_node: int = 2
    milp_experts: int = 8
    milp_slots: list[int] = field(default_factory=lambda: [2, 4])
    milp_time_limit_s: float = 10.0


@dataclass
class PlannerSpeedConfig:
    # The paper's Fig. 11 planner times (CSV n_device,C_e,time), relative to paths.data_dir.
    paper_results: str = "laer_moe_paper_results/planner_results_backup.csv"
    algorithms: list[str] = field(default_factory=lambda: ["laer", "laer_plus"])
    num_experts: int = 32
    devices_per_node: int = 8
    # Devices and slots per device to time (the paper's grid by default).
    devices: list[int] = field(default_factory=lambda: [64, 128, 256, 512, 1024])
    slots: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    # Random load matrices per (N, C); the reported time is the median over them (after one warm-up plan).
    repeats: int = 5
    # Tokens per source device: multinomial over experts with each source's weights (`loads`).
    tokens_per_device: int = 4096
    loads: LoadKind = LoadKind.dirichlet
    zipf_exponent: float = 1.0
    # laer_plus's time budget (its fast path); null: the paper's time at each (N, C), i.e. told to keep within it.
    laer_plus_budget_s: Optional[float] = None
    seed: int = 0


@dataclass
class LaerFig10Config:
    # Expert-load trace (SmartMoE npz), relative to paths.data_dir: each sample rescaled to the model's devices, layers,
    # experts and tokens (experiments.laer_paper.simulate).
    expert_trace: str = "smartmoe_expert_trace/smartmoe_counts.npz"
    # The paper's Fig. 10a per-rank time breakdown and Fig. 10b per-rank token counts, relative to paths.data_dir
    # (missing: the paper columns stay empty, with a warning).
    breakdown_results: str = "laer_moe_paper_results/breakdown_analysis_backup.csv"
    token_results: str = "laer_moe_paper_results/token_analysis_backup.csv"
    # Paper model names (experiments.laer_paper.MODELS) and simulated systems (training.sim.SystemName values;
    # laer_plus has no paper column).
    models: list[str] = field(default_factory=lambda: ["mixtral-8x7b-e8k2", "mixtral-8x7b-e16k4"])
    systems: list[str] = field(default_factory=lambda: ["fsdp_ep", "flexmoe", "laer", "laer_plus"])
    # Trace samples (iterations spread over training) simulated per (model, system); results are their mean.
    samples: int = 20


class AblationVariant(Enum):
    """The LAER-MoE paper's Fig. 12 variants (their ablation.sh approaches)."""

    FSDP = "FSDP"  # the FSDP+EP baseline (system fsdp_ep)
    LAER = "LAER"  # the paper's system
    no_comm_opt = "no_comm_opt"  # LAER with FSDP's prefetch limit 1 unit, not 2 (the artifact's flag; training.sim.Prefetch.unit)
    serial_comm = "serial_comm"  # LAER with every parameter / gradient communication synchronous (our comm_opt=False); no paper bar
    no_even = "no_even"  # LAER's planner without its even replica-count candidate (priority queue only)
    no_pq = "no_pq"  # LAER's planner without its priority-queue candidate (N*C/E replicas per expert)


@dataclass
class LaerFig12Config:
    # Expert-load trace (SmartMoE npz), relative to paths.data_dir.
    expert_trace: str = "smartmoe_expert_trace/smartmoe_counts.npz"
    # The paper's Fig. 12 iteration times (CSV method,avg_time_ms), relative to paths.data_dir.
    paper_results: str = "laer_moe_paper_results/ablation_analysis_backup.csv"
    # The paper's ablation model (experiments.laer_paper.MODELS).
    model: str = "mixtral-8x7b-e8k2"
    variants: list[AblationVariant] = field(default_factory=lambda: list(AblationVariant))
    # Trace samples simulated per variant; results are their mean.
    samples: int = 20


@dataclass
class BenchFsepConfig:
    # Expert-load trace (SmartMoE npz), relative to paths.data_dir; its 16 source ranks are summed into `ranks`.
    expert_trace: str = "smartmoe_expert_trace/smartmoe_counts.npz"
    # Layer shape: T tokens per rank per micro-batch (the paper has 32,768 per device), H, F = 3.5 H (Mixtral), E, k.
    tokens: int = 16384
    hidden: int = 128
    ffn: int = 448
    experts: int = 32
    top_k: int = 2
    # gloo processes N (one thread each) and FSEP slots per device C (N*C >= E).
    ranks: int = 2
    slots: int = 20
    # (iteration, layer) samples spread over the trace; timed repetitions per method and sample (median).
    samples: int = 20
    reps: int = 5
    # Repetitions of the slow padded DeepSpeed mode and of the no-overlap diagnostic fsep_sync (0: reps).
    ds_dropless_reps: int = 1
    sync_reps: int = 1
    # Untimed steps per method before the first sample.
    warmup: int = 1
    # Which of the trace's micro-batches each sample replays.
    microbatch: int = 0
    # FSEP launches the restore all-to-all before routing and dispatch.
    overlap_restore: bool = True
    # Rows per expert matmul in ep / fsdp_ep / fsep / balanced (a CPU cache tile; 0: whole blocks).
    max_block_rows: int = 1024
    # training.planner registry name that lays FSEP out, planned from the previous `window` micro-batches of the
    # layer (0: from the sample's own, an oracle).
    planner: str = "laer_plus"
    window: int = 4
    # Workers keep freed memory (glibc never trims), as a GPU's caching allocator would (common.launch).
    keep_freed_memory: bool = True


@dataclass
class BenchFsepRuntimeConfig:
    # gloo processes N (one thread each); decoder shape: H, F, E experts, top-k, C slots per device (N*C >= E).
    ranks: int = 2
    hidden: int = 64
    ffn: int = 224
    experts: int = 8
    top_k: int = 2
    slots: int = 4
    # Tokens per rank: batch sequences of seq_len positions (random token ids).
    batch: int = 4
    seq_len: int = 64
    # FSEP layer counts of the memory sweep (free vs keep restored experts).
    layers: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    # Layers of the step-time model (comm_opt on vs off), timed steps per mode (median) and untimed warm-up steps.
    time_layers: int = 4
    reps: int = 7
    warmup: int = 2
    # The paper's Fig. 12 ablation (CSV method,avg_time_ms), relative to paths.data_dir.
    paper_results: str = "laer_moe_paper_results/ablation_analysis_backup.csv"


@dataclass
class ServeReplica:
    # Tensor- and pipeline-parallel degrees of one replica.
    tp: int = 1
    pp: int = 1
    # Device ids it occupies (GPU ids on a cluster; on CPU a label: a replica on other devices is a new one).
    devices: list[int] = field(default_factory=lambda: [0])
    # x_kj: requests/s of each request type j this replica takes under the plan (the router uses their ratios).
    dispatch: list[float] = field(default_factory=lambda: [1.0, 0.0])


class PlanSource(Enum):
    """Where experiment=oserve/serve takes its plan from. Lower-case names: OmegaConf matches a config value to the
    member's name."""

    config = "config"  # serve.replicas and serve.types, as written in the experiment file
    scheduler = "scheduler"  # serving.scheduler on the trace slice's workload, the engine's profile as cost model


@dataclass
class ServeConfig:
    # The engine every replica runs (serving.engines.EngineConfig): engine.model ("" = the tiny local model, built
    # and cached), engine.max_model_len, engine.dtype, engine.device (cpu or gpu), engine.cpus_per_replica, ...
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(max_model_len=512))
    # Name clients send as `model` and /v1/models lists.
    model_name: str = "tiny"
    # The plan: one entry per replica (its x_kj per request type).
    replicas: list[ServeReplica] = field(default_factory=lambda: [
        ServeReplica(devices=[0], dispatch=[1.0, 0.0]), ServeReplica(devices=[1], dispatch=[0.0, 1.0])])
    # Request types: (input tokens, output tokens) centers; a request takes the nearest (in log1p space).
    types: list[list[float]] = field(default_factory=lambda: [[16.0, 16.0], [200.0, 64.0]])
    # A plan switched to live, serve.switch_after_s after the router is up (empty: none).
    switch_to: list[ServeReplica] = field(default_factory=list)
    switch_after_s: float = 10.0
    # Where the router listens (the loopback interface only) and its queue bound (beyond it: 429).
    host: str = "127.0.0.1"
    port: int = 8000
    max_in_flight: int = 64
    # Ray: join this cluster (null: start a local one of num_cpus CPUs).
    ray_address: Optional[str] = None
    num_cpus: int = 2
    # Stop after this many seconds (0: no limit) or answered requests (0: no limit); with neither and no load
    # generator, serve until Ctrl-C.
    duration_s: float = 0.0
    max_requests: int = 0
    # Replay a trace slice against the router (serving.loadgen.LoadSpec; num_requests 0: off), then stop.
    loadgen: LoadSpec = field(default_factory=lambda: LoadSpec(num_requests=0))
    trace_path: str = "azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv"
    trace_format: TraceFormat = TraceFormat.azure
    # Where the plan comes from: config (serve.replicas above) or scheduler (serving.scheduler on the trace slice's
    # workload with the engine's profile as cost model; on one CPU machine it has little to choose, hence not default).
    plan_source: PlanSource = PlanSource.config
    # plan_source scheduler: the engine's profile (profile.csv of an experiment=oserve/calibrate run), the requests of
    # the slice it plans for (serve.loadgen's start and scaling), its k-means types, the local devices it places on.
    profile_path: Optional[str] = None
    plan_requests: int = 200
    num_types: int = 2
    num_devices: int = 2
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


@dataclass
class BenchEnginesConfig:
    # The engine on both sides (serving.engines.EngineConfig; engine.model "" = the tiny local model).
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(max_model_len=512))
    # The replayed slice (serving.loadgen.LoadSpec): its lengths; its arrivals are replaced by Poisson at rate_rps.
    loadgen: LoadSpec = field(default_factory=lambda: LoadSpec(num_requests=40))
    rate_rps: float = 2.0
    # Interleaved A/B rounds (ABBA order: direct first in even rounds, routed first in odd ones).
    rounds: int = 3
    trace_path: str = "azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv"
    trace_format: TraceFormat = TraceFormat.azure
    # Local Ray cluster size, and how long vLLM's own server may take to become healthy.
    num_cpus: int = 2
    start_timeout_s: float = 600.0


@dataclass
class CalibrateConfig:
    # The engine of every replica (serving.engines.EngineConfig; engine.model "" = the tiny local model).
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(max_model_len=512))
    # The replayed slice (serving.loadgen.LoadSpec), through the router and through the simulator alike.
    loadgen: LoadSpec = field(default_factory=lambda: LoadSpec(num_requests=80))
    trace_path: str = "azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv"
    trace_format: TraceFormat = TraceFormat.azure
    # Replicas, one per request type (fitted on the slice): type k goes to replica k alone.
    num_replicas: int = 2
    # Requests replayed first and discarded (first-call costs of the router and the engines).
    warmup_requests: int = 8
    # The profile the simulator is fed (serving.engines.profile.ProfileGrid): of replica 0 alone, or with
    # profile_together of every replica at once (they then contend for the cores as when all of them serve).
    profile: ProfileGrid = field(default_factory=ProfileGrid)
    profile_together: bool = False
    # Local Ray cluster size (CPUs).
    num_cpus: int = 2


@dataclass
class TrainRunConfig:
    # Local ranks spawned (gloo on CPU); under torchrun / the deepspeed launcher their WORLD_SIZE wins.
    ranks: int = 2
    # FSEP slots per device C (parallel=fsep, fsdp_ep); N*C >= model.num_experts.
    slots_per_device: int = 4
    # Devices per node G for the routing rule and the planner (divides the world size); null: the launcher's
    # LOCAL_WORLD_SIZE (torchrun, the deepspeed launcher), else the spawned ranks (one machine, one node).
    devices_per_node: Optional[int] = None
    # Force every MoE layer's routing to the expert-load trace's per-expert counts (real skew).
    trace_replay: bool = False
    # The trace (SmartMoE npz), relative to paths.data_dir.
    expert_trace: str = "smartmoe_expert_trace/smartmoe_counts.npz"
    # Checkpoint every this many steps (0: never) into checkpoint_dir (null: <run dir>/checkpoints).
    checkpoint_every: int = 0
    checkpoint_dir: Optional[str] = None
    # Resume from this checkpoint folder, or from the newest complete one inside this folder (null: start fresh).
    resume: Optional[str] = None
    # Log a line every this many steps (every step goes to train.csv).
    log_every: int = 10
    # torch threads per spawned rank.
    threads_per_rank: int = 1


@dataclass
class SwitchCase:
    # Replicas before and after the switch, one [tp, pp] pair each, packed on devices from 0 largest first.
    current: list[list[int]] = field(default_factory=lambda: [[4, 1]])
    target: list[list[int]] = field(default_factory=lambda: [[2, 1], [2, 1]])


def _switch_cases() -> list[SwitchCase]:
    pairs = [
        ([[4, 1]], [[2, 1], [2, 1]]),  # TP4 -> 2 x TP2
        ([[4, 1], [4, 1]], [[8, 1]]),  # 2 x TP4 -> TP8
        ([[8, 1]], [[4, 1], [4, 1]]),  # TP8 -> 2 x TP4
        ([[2, 1]] * 4, [[4, 1]] * 2),  # 4 x TP2 -> 2 x TP4
        ([[8, 1]], [[4, 2]]),  # a PP change inside a node
        ([[8, 1]], [[8, 2]]),  # a PP change onto a second node
        ([[8, 1]] * 2, [[8, 1]] * 4),  # scale out onto two empty nodes
        ([[8, 1]] * 4, [[4, 1]] * 8),  # the whole cluster, TP8 -> TP4
        ([[8, 1]] * 4, [[8, 1]] * 2 + [[4, 1]] * 2 + [[2, 1]] * 4),  # homogeneous -> heterogeneous
        ([[4, 1]] * 8, [[8, 1]] * 4),
    ]
    return [SwitchCase(c, t) for c, t in pairs]


@dataclass
class SwitchCostConfig:
    # Served model: a name from serving.costmodel.models.MODELS.
    model: str = "llama2-70b"
    # The switches planned.
    cases: list[SwitchCase] = field(default_factory=_switch_cases)
    # Requests in flight on each current replica, context lengths uniform in [low, high] tokens.
    inflight_per_replica: int = 32
    context_tokens: list[int] = field(default_factory=lambda: [128, 4096])
    # The switch planner's options (serving.switching.SwitchOptions): options.storage_bw (null: the cluster's),
    # options.kv_move_min_tokens, options.kv_headroom, options.rebuild_s, options.engine_startup_s, ...
    options: SwitchOptions = field(default_factory=SwitchOptions)
    # The OServe paper's figure: switches of 70B-class models stay under this many seconds.
    paper_bound_s: float = 10.0


@dataclass
class ReproPart:
    # An experiment file under conf/experiment/ (no .yaml) and the overrides that make it quick; a name whose file does
    # not exist is skipped with a message (so the list may name figures still being written).
    experiment: str = ""
    overrides: list[str] = field(default_factory=list)


@dataclass
class ReproConfig:
    # The parts run, in this order (keys of repro.catalog); each writes into its own folder of the run directory.
    parts: list[str] = field(default_factory=list)
    # Part name -> its experiment and quick overrides (conf/experiment/repro.yaml lists them).
    catalog: dict[str, ReproPart] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------------
# Per-experiment schemas: the common keys, then the sections that experiment reads.
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class SimValidateConfig:
    # Expert-load trace (SmartMoE npz), relative to paths.data_dir.
    expert_trace: str = "smartmoe_expert_trace/smartmoe_counts.npz"
    # Compare with the LAER-MoE paper's result CSVs (laer_moe_paper_results/ under paths.data_dir).
    paper: bool = True
    # Trace samples per simulated paper setting (experiments.laer_paper.trace_samples).
    samples: int = 5
    # Rerun the least-squares fit of the calibration's two fitted parameters instead of the committed values.
    refit: bool = False
    # Measured CPU benchmark numbers: relative to the repository root, or absolute.
    measured: str = "experiments/reference/laer_cpu_bench.json"
    # A fresh results.json of laer/bench_train or laer/bench_fsep to validate against instead (null: the reference's).
    bench_train_results: Optional[str] = None
    bench_fsep_results: Optional[str] = None


@dataclass
class ExperimentConfig:
    # Which experiment function runs: a key of experiments.run.TASKS (set by the experiment file, not by hand).
    task: str = "quickstart"
    seed: int = 0
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class QuickstartExperiment(ExperimentConfig):
    quickstart: QuickstartConfig = field(default_factory=QuickstartConfig)


@dataclass
class OServeSpatialExperiment(ExperimentConfig):
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # The request workload and the GPUs used (the served model is oserve.model).
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    num_gpus: int = 32
    oserve: OServeConfig = field(default_factory=OServeConfig)


@dataclass
class OServeTemporalExperiment(ExperimentConfig):
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # workload.format is the user trace's format; workload.num_types the request types found by k-means.
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    num_gpus: int = 32
    # The served model, cost model, engines, SLO and the spatial scheduler (as oserve/spatial).
    oserve: OServeConfig = field(default_factory=OServeConfig)
    # The closed-loop controller (serving.control.ControllerConfig): interval_s, horizon_s, margin, min_gain, ...
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    temporal: OServeTemporalConfig = field(default_factory=OServeTemporalConfig)


@dataclass
class OServeAblationExperiment(OServeTemporalExperiment):
    pass


@dataclass
class OServeBenchExperiment(ExperimentConfig):
    bench: OServeBenchConfig = field(default_factory=OServeBenchConfig)


@dataclass
class OServePredictExperiment(ExperimentConfig):
    predict: OServePredictConfig = field(default_factory=OServePredictConfig)


@dataclass
class PlannerQualityExperiment(ExperimentConfig):
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    planner_quality: PlannerQualityConfig = field(default_factory=PlannerQualityConfig)


@dataclass
class PlannerSpeedExperiment(ExperimentConfig):
    planner_speed: PlannerSpeedConfig = field(default_factory=PlannerSpeedConfig)


@dataclass
class OServeServeExperiment(ExperimentConfig):
    serve: ServeConfig = field(default_factory=ServeConfig)


@dataclass
class OServeBenchEnginesExperiment(ExperimentConfig):
    bench_engines: BenchEnginesConfig = field(default_factory=BenchEnginesConfig)


@dataclass
class OServeCalibrateExperiment(ExperimentConfig):
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)


@dataclass
class LaerFig10Experiment(ExperimentConfig):
    fig10: LaerFig10Config = field(default_factory=LaerFig10Config)


@dataclass
class LaerFig12Experiment(ExperimentConfig):
    fig12: LaerFig12Config = field(default_factory=LaerFig12Config)


@dataclass
class BenchFsepExperiment(ExperimentConfig):
    bench_fsep: BenchFsepConfig = field(default_factory=BenchFsepConfig)


@dataclass
class BenchFsepRuntimeExperiment(ExperimentConfig):
    bench_fsep_runtime: BenchFsepRuntimeConfig = field(default_factory=BenchFsepRuntimeConfig)


@dataclass
class TrainExperiment(ExperimentConfig):
    # The decoder's shape: a conf/model file (training.model.ModelConfig fields), e.g. model=tiny_mixtral.
    model: Any = None
    parallel: Parallel = Parallel.fsep
    # conf/planner/<name>.yaml: planner=laer_plus; planner.window=5.
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainRunConfig = field(default_factory=TrainRunConfig)


@dataclass
class BenchTrainConfig:
    # Training steps run (and discarded) before the measured ones: allocator, DeepSpeed and planner warm-up.
    warmup_steps: int = 2
    # Measured training steps per (system, routing) and repeat.
    measure_steps: int = 4
    # Runs of every (system, routing), interleaved across systems; the table reports their median and min/max.
    repeats: int = 3
    # Replay the trace from this micro-batch position on: the SmartMoE trace's first recorded iteration (positions
    # 0-3) is nearly uniform (EP-layout imbalance 1.01 against ~1.5 after), so the default starts past it.
    trace_offset: int = 4
    # Systems compared (experiments.bench_train.SYSTEMS names): fsep, ep, fsdp_ep, ds_ep, ds_cap1.
    systems: list[str] = field(default_factory=lambda: ["fsep", "ep", "fsdp_ep", "ds_ep", "ds_cap1"])


@dataclass
class BenchTrainExperiment(TrainExperiment):
    bench_train: BenchTrainConfig = field(default_factory=BenchTrainConfig)


@dataclass
class OServeSwitchCostExperiment(ExperimentConfig):
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    switch_cost: SwitchCostConfig = field(default_factory=SwitchCostConfig)


@dataclass
class Fig8Config:
    # Expert-load trace (SmartMoE npz), relative to paths.data_dir: every model's loads, rescaled to it. One trace
    # for all of the paper's datasets and aux-loss settings, so those share one simulated time per model and system.
    expert_trace: str = "smartmoe_expert_trace/smartmoe_counts.npz"
    # The paper's Fig. 8 times, relative to paths.data_dir (fetched when missing unless paths.fallback is none; never
    # a stand-in: when it cannot be had, the paper columns stay empty, with one warning).
    paper_csv: str = "laer_moe_paper_results/e2e_analysis_backup.csv"
    # Paper model names (experiments.laer_paper.MODELS).
    models: list[str] = field(default_factory=lambda: [
        "mixtral-8x7b-e8k2", "mixtral-8x7b-e16k4", "mixtral-8x22b-e8k2", "mixtral-8x22b-e16k4", "qwen-8x7b-e8k2",
        "qwen-8x7b-e16k4"])
    # Systems simulated (training.sim.SystemName values; strings, so building a config does not import the
    # simulator). Speedups are over megatron_ep, and laer's over each baseline, where those are listed.
    systems: list[str] = field(default_factory=lambda: ["megatron_ep", "fsdp_ep", "flexmoe", "laer", "laer_plus"])
    # Trace samples (iterations spread evenly over training) simulated per model and system.
    samples: int = 8
    # laer_plus's planning budget per layer (training.planner.laer_plus time_budget_s); null: the planner's default.
    laer_plus_budget_s: Optional[float] = 0.005
    # A simulated speedup meets the paper's when within this relative error of it.
    tolerance: float = 0.10


@dataclass
class Fig8Experiment(ExperimentConfig):
    fig8: Fig8Config = field(default_factory=Fig8Config)


@dataclass
class SimValidateExperiment(ExperimentConfig):
    sim_validate: SimValidateConfig = field(default_factory=SimValidateConfig)


@dataclass
class ReproExperiment(ExperimentConfig):
    repro: ReproConfig = field(default_factory=ReproConfig)


# task -> its schema (stored as config `schema/<task>`).
SCHEMAS: dict[str, type[ExperimentConfig]] = {
    "quickstart": QuickstartExperiment,
    "oserve_spatial": OServeSpatialExperiment,
    "oserve_bench": OServeBenchExperiment,
    "oserve_temporal": OServeTemporalExperiment,
    "oserve_ablation": OServeAblationExperiment,
    "oserve_serve": OServeServeExperiment,
    "oserve_bench_engines": OServeBenchEnginesExperiment,
    "oserve_predict": OServePredictExperiment,
    "oserve_calibrate": OServeCalibrateExperiment,
    "planner_quality": PlannerQualityExperiment,
    "planner_speed": PlannerSpeedExperiment,
    "laer_fig10": LaerFig10Experiment,
    "laer_fig12": LaerFig12Experiment,
    "bench_fsep": BenchFsepExperiment,
    "bench_fsep_runtime": BenchFsepRuntimeExperiment,
    "train": TrainExperiment,
    "bench_train": BenchTrainExperiment,
    "sim_validate": SimValidateExperiment,
    "oserve_switch_cost": OServeSwitchCostExperiment,
    "laer_fig8": Fig8Experiment,
    "repro": ReproExperiment,
}


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base", node=ExperimentConfig)
    for task, node in SCHEMAS.items():
        cs.store(group="schema", name=task, node=node)
