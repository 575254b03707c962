"""Structured config schema registered with Hydra's ConfigStore, so a wrong key or type fails with Hydra's message.

Library code never sees these: entry points turn them into the libraries' own dataclasses.
Each experiment owns one section below (the `task` key picks which function runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore


@dataclass
class PathsConfig:
    # Where the real traces live. null: $LOADWISE_DATA_DIR, else ../shared/data beside the checkout, else ./data.
    data_dir: Optional[str] = None
    # Profile loaded by the `local_cpu` cluster preset and the cost models (null: common/profiles/local_cpu.json).
    profile: Optional[str] = None


@dataclass
class ClusterConfig:
    # A name from common.topology.PRESETS.
    preset: str = "a100_80g_4x8"
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
class Config:
    # Which experiment function runs: a key of experiments.run.TASKS.
    task: str = "quickstart"
    seed: int = 0
    paths: PathsConfig = field(default_factory=PathsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    quickstart: QuickstartConfig = field(default_factory=QuickstartConfig)


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
