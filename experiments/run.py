"""The one entry point: `python -m experiments.run [experiment=NAME] [key=value ...]` (add -m before overrides to sweep).

`main` is a thin Hydra shell over `run(cfg, out_dir)`, which tests call directly with a composed config.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments.config import register

# task name -> "module:function"; each function takes (cfg, out_dir) and returns a dict of results.
# Imported lazily so that a training experiment never imports the serving stack and vice versa.
TASKS = {
    "quickstart": "experiments.quickstart:run",
    "planner_quality": "experiments.planner_quality:run",
    "planner_speed": "experiments.planner_speed:run",
}


def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    if cfg.task not in TASKS:
        raise ValueError(f"config key 'task': unknown task {cfg.task!r}; known: {sorted(TASKS)}")
    module, func = TASKS[cfg.task].split(":")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return getattr(importlib.import_module(module), func)(cfg, out_dir)


register()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
