"""The one entry point: `loadwise [experiment=NAME] [key=value ...]` (= `python -m experiments.run`; add -m before the
overrides to sweep; `loadwise --list` lists the experiments).

`main` is a thin Hydra shell over `run(cfg, out_dir)`, which tests call directly with a composed config. Every run
writes results.json (task, resolved config, the experiment's results) beside the experiment's own CSV and PNG files,
and run.log (everything logged) in the same folder.
"""

from __future__ import annotations

import difflib
import importlib
import json
import logging
import os
import sys
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from experiments.config import SCHEMAS, register

log = logging.getLogger("loadwise")

CONF = Path(__file__).resolve().parent.parent / "conf"

# task name -> "module:function"; each function takes (cfg, out_dir) and returns a dict of results.
# Imported lazily so that a training experiment never imports the serving stack and vice versa.
TASKS = {
    "quickstart": "experiments.quickstart:run",
    "oserve_spatial": "experiments.oserve_spatial:run",
    "oserve_bench": "experiments.bench_oserve:run",
    "oserve_temporal": "experiments.oserve_temporal:run",
    "oserve_ablation": "experiments.oserve_ablation:run",
    "oserve_serve": "experiments.oserve_serve:run",
    "oserve_bench_engines": "experiments.bench_engines:run",
    "oserve_predict": "experiments.oserve_predict:run",
    "oserve_calibrate": "experiments.calibrate_engines:run",
    "planner_quality": "experiments.planner_quality:run",
    "planner_speed": "experiments.planner_speed:run",
    "laer_fig10": "experiments.laer_fig10:run",
    "laer_fig12": "experiments.laer_fig12:run",
    "bench_fsep": "experiments.bench_fsep:run",
    "bench_fsep_runtime": "experiments.bench_fsep_runtime:run",
    "train": "experiments.train:run",
    "bench_train": "experiments.bench_train:run",
    "sim_validate": "experiments.sim_validate:run",
    "oserve_switch_cost": "experiments.oserve_switch:run",
    "laer_fig8": "experiments.laer_fig8:run",
    "repro": "experiments.repro:run",
}
assert set(TASKS) == set(SCHEMAS), "every task needs a schema in experiments/config.py and vice versa"

# Bad input (a missing data file, a malformed trace, a bad config value) raises these; the message names the file,
# line or key, so it is printed alone instead of a traceback from deep inside. HYDRA_FULL_ERROR=1 shows the traceback.
USER_ERRORS = (FileNotFoundError, ValueError)
# A broken invariant inside a simulator or solver: still one line (and exit 3), naming the task and how to see more.
INTERNAL_ERRORS = (RuntimeError, AssertionError)


def experiments() -> dict[str, str]:
    """Every experiment file -> the first line of its header comment (what it does)."""
    out = {}
    for path in sorted((CONF / "experiment").rglob("*.yaml")):
        lines = [ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#") and "@package" not in ln]
        out[path.relative_to(CONF / "experiment").with_suffix("").as_posix()] = lines[0] if lines else ""
    return out


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"results hold a {type(x).__name__}, which JSON cannot store")


def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    if cfg.task not in TASKS:
        raise ValueError(f"config key 'task': unknown task {cfg.task!r}; known: {sorted(TASKS)}")
    module, func = TASKS[cfg.task].split(":")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = getattr(importlib.import_module(module), func)(cfg, out_dir)
    record = {"task": cfg.task, "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
              "results": results}
    (out_dir / "results.json").write_text(json.dumps(record, indent=1, default=_json_default))
    log.info("results in %s", out_dir)
    return results


register()


def _multirun() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
def main(cfg: DictConfig) -> None:
    out_dir = HydraConfig.get().runtime.output_dir
    try:
        with logging_redirect_tqdm():  # log lines print above a progress bar, not on its line
            results = run(cfg, out_dir)
    except USER_ERRORS + INTERNAL_ERRORS as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        internal = isinstance(e, INTERNAL_ERRORS)
        message = (f"internal error in task {cfg.task} ({type(e).__name__}: {e}); rerun with HYDRA_FULL_ERROR=1 "
                   "for the traceback") if internal else str(e)
        if not _multirun():
            _error(message)
            sys.exit(3 if internal else 1)
        # In a sweep one bad point must not stop the others: record it in its folder and go on.
        job = HydraConfig.get().job.num
        log.error("error in sweep job %s (%s): %s", job, " ".join(HydraConfig.get().overrides.task), message)
        (Path(out_dir) / "FAILED").write_text(f"{message}\n")
        return
    # A task that records failed parts and carries on (experiment=repro) still fails the command, after results.json.
    failed = results.get("failed") if isinstance(results, dict) else None
    if failed:
        message = f"{len(failed)} part(s) of task {cfg.task} failed: {', '.join(failed)} (see report.md, run.log)"
        if not _multirun():
            _error(message)
            sys.exit(1)
        (Path(out_dir) / "FAILED").write_text(f"{message}\n")


def _error(message: str) -> None:
    """One line on stderr, on a fresh line even when a progress bar was drawing."""
    sys.stdout.flush()
    print(f"\nerror: {message}" if sys.stderr.isatty() else f"error: {message}", file=sys.stderr)


def _check_experiment(argv: list[str]) -> str | None:
    """A message when `experiment=NAME` names no experiment file (Hydra would list only the top folder's files)."""
    known = experiments()
    for arg in argv:
        if arg.startswith("experiment="):
            names = arg.split("=", 1)[1].split(",")  # a sweep over experiments lists them with commas
            for name in names:
                if name not in known:
                    close = difflib.get_close_matches(name, list(known), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    return (f"unknown experiment {name!r}{hint} Experiments (`loadwise --list`): "
                            + ", ".join(known))
    return None


def cli() -> None:
    """Console entry point `loadwise`: `--list`, a clear error for an unknown experiment, then Hydra."""
    argv = sys.argv[1:]
    if argv[:1] in (["--list"], ["-l"]):
        for name, what in experiments().items():
            print(f"{name:24s} {what}")
        return
    problem = _check_experiment(argv)
    if problem:
        _error(problem)
        sys.exit(2)
    main()


class SweepReport(Callback):
    """Hydra callback: after a sweep, name the failed jobs and exit 1 if any failed (each logged its own error)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = sorted((p.parent.name for p in sweep_dir.glob("*/FAILED")), key=lambda s: (len(s), s))
        if failed:
            _error(f"{len(failed)} sweep job(s) failed: {', '.join(failed)} (see FAILED and run.log under {sweep_dir})")
            sys.exit(1)


if __name__ == "__main__":
    cli()
