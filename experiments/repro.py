"""Quick reproduction of both papers (experiment=repro, the default of `make run`): a list of parts, each an existing
experiment with quick overrides, run one after another in this process, each into its own folder of the run
directory, then one report beside the papers' numbers.

    loadwise experiment=repro
    loadwise experiment=repro repro.parts=[laer_planner,oserve_spatial]

A part is composed exactly as `loadwise experiment=<its experiment> <its overrides>` would compose it (the same
conf/ tree and schemas) with this run's `paths` and `seed`, and run through `experiments.run.run`, so its folder holds
what that command leaves (results.json, CSVs, PNGs). Its returned `headline` rows (experiments.tables.headline_row)
make its table in report.md and on the console. A part whose experiment file does not exist is skipped; one that
stops on missing data (a file with no synthetic stand-in) is skipped with the fix; one that fails for any other reason
is reported with its one-line error and a FAILED file holding the traceback, and the others still run (the command
then exits 1: experiments.run sees the `failed` list).

Writes report.md (a banner when a part ran on synthetic data; per part its headline table, wall and CPU time, links
to every CSV and PNG it wrote) into the run directory.
"""

from __future__ import annotations

import logging
import os
import resource
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from tqdm import tqdm

log = logging.getLogger(__name__)

CONF = Path(__file__).resolve().parent.parent / "conf"
REPORT = "report.md"


class PartStatus(Enum):
    ok = "ok"
    failed = "failed"  # raised an error: reported, the run exits non-zero
    skipped = "skipped"  # its experiment file does not exist, or a data file it needs has no stand-in


@dataclass(frozen=True)
class PartOutcome:
    """What one part did."""

    name: str  # key of repro.catalog; also its folder in the run directory
    experiment: str  # conf/experiment/<experiment>.yaml
    overrides: list[str]  # the quick overrides it ran with
    status: PartStatus
    message: str = ""  # one line: why it failed or was skipped
    wall_s: float = 0.0
    cpu_s: float = 0.0  # this process (all threads) plus the ranks it spawned and waited for
    data_source: str = ""  # real, downloaded or synthetic (empty: the part never got to its data)
    headline: list[dict] = field(default_factory=list)  # its experiment's headline rows
    files: list[str] = field(default_factory=list)  # CSVs and PNGs it wrote, relative to the run directory


def check_parts(rc) -> list[str]:
    """repro.parts, each a key of repro.catalog (else a one-line error listing them)."""
    parts = [str(p) for p in rc.parts]
    unknown = [p for p in parts if p not in rc.catalog]
    if unknown:
        raise ValueError(f"config key 'repro.parts': unknown part(s) {', '.join(map(repr, unknown))}; known: "
                         f"{', '.join(rc.catalog)}")
    if not parts:
        raise ValueError(f"config key 'repro.parts' is empty; known parts: {', '.join(rc.catalog)}")
    return parts


def compose_experiment(experiment: str, overrides: list[str]) -> DictConfig:
    """The config `loadwise experiment=<experiment> <overrides>` runs with (inside a Hydra app: its loader, so the
    same search path; outside one, e.g. a test: conf/ directly)."""
    args = [f"experiment={experiment}", *overrides]
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=args)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=args)


def _cpu_s() -> float:
    """CPU seconds of this process and of its children that ended (the training part's spawned ranks)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "(no message)"
    return f"{type(err).__name__}: {text[:400]}"


def run_part(name: str, spec, cfg: DictConfig, run_dir: Path) -> PartOutcome:
    """Compose and run one part into run_dir / name."""
    from experiments.run import run as run_experiment

    overrides = [str(o) for o in spec.overrides]
    base = PartOutcome(name, str(spec.experiment), overrides, PartStatus.skipped)
    if not (CONF / "experiment" / f"{spec.experiment}.yaml").is_file():
        return replace(base, message=f"experiment {spec.experiment!r} does not exist "
                                      f"yet (no conf/experiment/{spec.experiment}.yaml)")
    out = run_dir / name
    t0, c0 = time.perf_counter(), _cpu_s()
    try:
        part_cfg = compose_experiment(str(spec.experiment), overrides)
        part_cfg.paths = cfg.paths  # this run's data directory and fallback win, as its seed does
        part_cfg.seed = cfg.seed
        results = run_experiment(part_cfg, out)
    except Exception as err:  # one failing part must not stop the others
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
        missing_data = isinstance(err, FileNotFoundError) and not (out / "results.json").exists()
        out.mkdir(parents=True, exist_ok=True)
        (out / "FAILED").write_text(f"{_one_line(err)}\n\n{traceback.format_exc()}")
        status = PartStatus.skipped if missing_data else PartStatus.failed
        what = "skipped: a data file it needs is missing" if missing_data else "FAILED"
        log.error("part %s (%s) %s: %s", name, spec.experiment, what, _one_line(err))
        return replace(base, status=status, message=_one_line(err), wall_s=wall, cpu_s=cpu,
                        files=_files(out, run_dir) + [str((out / "FAILED").relative_to(run_dir))])
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    synthetic = (out / "synthetic_data").is_dir()  # ensure_files writes stand-ins there only when it needs them
    source = results.get("data_source") or ("synthetic" if synthetic else "real")
    return replace(base, status=PartStatus.ok, wall_s=wall, cpu_s=cpu, data_source=source,
                    headline=list(results.get("headline", [])), files=_files(out, run_dir))


def _files(out: Path, run_dir: Path) -> list[str]:
    """Every CSV and PNG under a part's folder (not its synthetic stand-in inputs), relative to the run directory."""
    if not out.is_dir():
        return []
    found = [p for p in out.rglob("*") if p.suffix in (".csv", ".png") and "synthetic_data" not in p.parts]
    return [str(p.relative_to(run_dir)) for p in sorted(found, key=lambda p: (p.suffix, str(p)))]


def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    out_dir = Path(out_dir)
    rc = cfg.repro
    parts = check_parts(rc)
    t0, c0 = time.perf_counter(), _cpu_s()
    outcomes = []
    with tqdm(parts, desc="repro", unit="part") as bar:
        for name in bar:
            bar.set_postfix_str(name)
            log.info("repro: part %s (%s %s)", name, rc.catalog[name].experiment,
                     " ".join(rc.catalog[name].overrides))
            outcome = run_part(name, rc.catalog[name], cfg, out_dir)
            outcomes.append(outcome)
            log.info("%s", "\n".join(part_table(outcome)))
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    report = render_report(outcomes, wall, cpu)
    (out_dir / REPORT).write_text(report)
    log.info("%s", "\n".join(["repro: every part side by side with the papers"]
                             + [line for o in outcomes for line in part_table(o)] + [summary_line(outcomes, wall, cpu)]))
    log.info("report: %s", out_dir / REPORT)
    by = {s: [o.name for o in outcomes if o.status is s] for s in PartStatus}
    return {
        "parts": [{**asdict(o), "status": o.status.value} for o in outcomes],
        "headline": [{"part": o.name, **row} for o in outcomes for row in o.headline],
        "failed": by[PartStatus.failed],
        "skipped": by[PartStatus.skipped],
        "synthetic": [o.name for o in outcomes if o.data_source == "synthetic"],
        "wall_s": wall, "cpu_s": cpu,
        "report": str(out_dir / REPORT),
    }


# ---- tables ---------------------------------------------------------------------------------------------------------


def _num(x) -> str:
    if x is None or x == "":
        return ""
    x = float(x)
    return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.3e}"


def _err(x) -> str:
    return "" if x is None else f"{float(x):+.1%}"


def part_table(o: PartOutcome) -> list[str]:
    """The console table of one part: its headline rows, ours beside the paper's."""
    head = f"[{o.name}] {o.experiment}: {o.status.value}"
    if o.status is not PartStatus.ok:
        return [f"{head}: {o.message}"]
    lines = [f"{head}, wall {o.wall_s:.1f} s, CPU {o.cpu_s:.1f} s" + (", SYNTHETIC data" if o.data_source ==
                                                                       "synthetic" else "")]
    if not o.headline:
        return lines + ["  (no headline rows)"]
    f, w, m = (max(len(k), *(len(r[k]) for r in o.headline)) for k in ("figure", "setting", "metric"))
    lines.append(f"  {'figure':{f}s}  {'setting':{w}s}  {'metric':{m}s} {'ours':>10s} {'paper':>10s} {'error':>8s}")
    for r in o.headline:
        lines.append(f"  {r['figure']:{f}s}  {r['setting']:{w}s}  {r['metric']:{m}s} {_num(r['ours']):>10s} "
                     f"{_num(r['paper']):>10s} {_err(r['error']):>8s}")
    return lines


def summary_line(outcomes: list[PartOutcome], wall: float, cpu: float) -> str:
    counts = {s: sum(o.status is s for o in outcomes) for s in PartStatus}
    return (f"repro: {counts[PartStatus.ok]} part(s) ran, {counts[PartStatus.skipped]} skipped, "
            f"{counts[PartStatus.failed]} failed; wall {wall:.0f} s, CPU {cpu:.0f} s")


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def render_report(outcomes: list[PartOutcome], wall: float, cpu: float) -> str:
    """report.md: a synthetic-data banner, an overview table, then per part its headline table, times and files."""
    lines = ["# Quick reproduction: LAER-MoE and OServe beside the papers", ""]
    synthetic = [o.name for o in outcomes if o.data_source == "synthetic"]
    if synthetic:
        lines += [f"> **SYNTHETIC DATA.** {', '.join(synthetic)} ran on synthetic stand-ins for missing data files "
                  "(made-up numbers in the real files' format): their numbers are not the papers' setting. "
                  "`make data` fetches the real files.", ""]
    lines += [summary_line(outcomes, wall, cpu) + ". Each part is one experiment with quick overrides; its full "
              "version is `loadwise experiment=<experiment>`. Error = (ours - paper) / paper.", "",
              "| part | experiment | status | wall s | CPU s | data |", "|---|---|---|---|---|---|"]
    for o in outcomes:
        lines.append(f"| [{o.name}](#{o.name.replace('_', '-')}) | `{o.experiment}` | {o.status.value} | "
                     f"{o.wall_s:.1f} | {o.cpu_s:.1f} | {o.data_source} |")
    for o in outcomes:
        lines += ["", f"## {o.name}", "", f"`loadwise experiment={o.experiment} {' '.join(o.overrides)}`".rstrip(),
                  ""]
        if o.status is PartStatus.failed:
            lines += [f"**FAILED**: {_md(o.message)}", ""]
        elif o.status is PartStatus.skipped:
            lines += [f"Skipped: {_md(o.message)}", ""]
        if o.status is not PartStatus.skipped or o.wall_s:
            lines += [f"Wall {o.wall_s:.1f} s, CPU {o.cpu_s:.1f} s" + (" (synthetic data)" if o.data_source ==
                                                                       "synthetic" else ""), ""]
        if o.headline:
            lines += ["| figure | setting | metric | ours | paper | error |", "|---|---|---|---|---|---|"]
            lines += [f"| {_md(r['figure'])} | {_md(r['setting'])} | {_md(r['metric'])} | {_num(r['ours'])} | "
                      f"{_num(r['paper'])} | {_err(r['error'])} |" for r in o.headline]
            lines.append("")
        elif o.status is PartStatus.ok:
            lines += ["(no headline rows)", ""]
        if o.files:
            lines += ["Files: " + " · ".join(f"[{Path(f).relative_to(o.name)}]({f})" for f in o.files), ""]
        lines += [f"![{Path(f).relative_to(o.name)}]({f})" for f in o.files if f.endswith(".png")]
    return "\n".join(lines).rstrip() + "\n"
