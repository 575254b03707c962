"""The one entry point: `python -m experiments.run [experiment=NAME] [key=value ...]` (add -m before overrides to sweep).

`main` is a thin Hydra shell over `run(cfg, out_dir)`, which tests call directly with a composed config.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments.config import register

# task name -> "module:function"; each function takes (cfg, out_dir) and returns a dict of results.
# Imported lazily so that a training experiment never imports the serving stack and vice versa.
TASKS = {
    "quickstart": "experiments.quickstart:run",
    "oserve_spatial": "experiments.oserve_spatial:run",
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
    try:
        run(cfg, HydraConfig.get().runtime.output_dir)
    except (FileNotFoundError, ValueError) as e:
        # Bad input (a missing data file, a malformed trace, a bad config value): the message names the file, line
        # or key, so print it alone instead of a traceback from deep inside. HYDRA_FULL_ERROR=1 shows the traceback.
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
