"""Where the real data lives, and which files a run uses when some are missing.

Entry points pass the environment and the config in; library code never reads them.

    data_dir = locate_data_dir(cfg.paths.data_dir, os.environ)     # where, and which setting said so
    files = ensure_files(data_dir, [names...], Fallback.synthetic, synthetic_dir=out_dir / "synthetic_data")
    files.path(name)                                                # real, freshly downloaded, or a synthetic stand-in
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from common.datasets import ConvertedTrace, DataFile

ENV_VAR = "LOADWISE_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parent.parent
# The probe and each download wait at most this long inside an experiment, so an offline machine moves on quickly
# (`make data` itself waits longer).
FETCH_TIMEOUT_S = 5.0

_LOG = logging.getLogger(__name__)


class DirOrigin(Enum):
    """Which setting chose the data directory, highest precedence first."""

    config = "paths.data_dir"
    env = f"${ENV_VAR}"
    shared = "the default ../shared/data beside the checkout"
    local = "the default ./data in the checkout"


@dataclass(frozen=True)
class DataDir:
    """The data directory and where that choice came from (for messages that say what to change)."""

    path: Path
    origin: DirOrigin

    def describe(self) -> str:
        if self.origin in (DirOrigin.config, DirOrigin.env):
            return f"{self.path} (set by {self.origin.value})"
        return f"{self.path} ({self.origin.value})"

    def fetch_command(self) -> str:
        """The command that downloads the public originals into this directory."""
        if self.origin is DirOrigin.config:  # `make data` reads the variable, not the Hydra config
            return f"{ENV_VAR}={self.path} make data"
        return "make data"

    def how_to_fix(self) -> str:
        fetch = f"fetch the public originals into it with `{self.fetch_command()}`"
        if self.origin is DirOrigin.config:
            return f"point paths.data_dir at the directory that holds the file, or {fetch}"
        if self.origin is DirOrigin.env:
            return (
                f"fix or unset ${ENV_VAR}, pass paths.data_dir=DIR (it wins over the variable), or {fetch}"
            )
        return f"pass paths.data_dir=DIR (or set ${ENV_VAR}) to a directory that holds it, or {fetch}"


def locate_data_dir(configured: str | Path | None = None, env: Mapping[str, str] | None = None) -> DataDir:
    """Data directory by precedence: `configured` (paths.data_dir, an explicit choice), then $LOADWISE_DATA_DIR
    (in `env`), then ../shared/data beside the checkout when it exists, else ./data in the checkout."""
    if configured:
        return DataDir(Path(configured).expanduser(), DirOrigin.config)
    if env and env.get(ENV_VAR):
        return DataDir(Path(env[ENV_VAR]).expanduser(), DirOrigin.env)
    shared = REPO_ROOT.parent / "shared" / "data"
    if shared.is_dir():
        return DataDir(shared, DirOrigin.shared)
    return DataDir(REPO_ROOT / "data", DirOrigin.local)


def resolve_data_dir(configured: str | Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """The path of locate_data_dir (same precedence)."""
    return locate_data_dir(configured, env).path


def _as_data_dir(data_dir: DataDir | str | Path) -> DataDir:
    return data_dir if isinstance(data_dir, DataDir) else DataDir(Path(data_dir), DirOrigin.config)


def missing_message(data_dir: DataDir, names: Sequence[str], detail: str = "") -> str:
    """One line: which files are missing, from which directory and setting, and what to do."""
    head = (
        f"data file {data_dir.path / names[0]} not found"
        if len(names) == 1
        else f"data files {', '.join(names)} not found in {data_dir.path}"
    )
    return f"{head}; the data directory is {data_dir.describe()}{detail}: {data_dir.how_to_fix()}"


def data_file(data_dir: DataDir | str | Path, relative: str) -> Path:
    """A file under the data directory, with an error that says where the directory came from and how to get the
    file when it is missing (a bare path counts as paths.data_dir)."""
    data_dir = _as_data_dir(data_dir)
    path = data_dir.path / relative
    if not path.exists():
        raise FileNotFoundError(missing_message(data_dir, [relative]))
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Missing files: fetch them, or stand in for them
# ---------------------------------------------------------------------------------------------------------------------


class Fallback(Enum):
    """What a run does when a data file it needs is missing (config key paths.fallback)."""

    none = "none"  # stop with an error that says how to get the file
    download = "download"  # fetch the public original into the data directory (sha256-checked), else stop
    synthetic = "synthetic"  # fetch it; if that fails, run on a synthetic stand-in, with a warning saying so


class Source(Enum):
    """Where a file a run read came from."""

    real = "real"  # already in the data directory
    downloaded = "downloaded"  # fetched into the data directory by this run, sha256 verified
    synthetic = "synthetic"  # generated by common.synthetic: same format, made-up numbers


@dataclass(frozen=True)
class DataFiles:
    """The files a run reads: every requested name resolves under `root`."""

    root: Path  # the data directory, or (when a stand-in was needed) the folder of stand-ins and links to real files
    data_dir: DataDir  # where the real files were looked for
    sources: Mapping[str, Source] = field(default_factory=dict)  # requested name -> where its file came from

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def source(self) -> Source:
        """The least real source among the files: one synthetic file makes the run synthetic."""
        for s in (Source.synthetic, Source.downloaded):
            if s in self.sources.values():
                return s
        return Source.real

    def describe(self) -> str:
        if self.source is Source.synthetic:
            fake = [n for n, s in self.sources.items() if s is Source.synthetic]
            return f"SYNTHETIC stand-ins for {', '.join(fake)} (in {self.root}); not the real traces"
        return f"{self.source.value} files from {self.data_dir.describe()}"

    def summary(self) -> dict:
        """For a run's results: the overall source and, per file, its path and source."""
        return {
            "source": self.source.value,
            "data_dir": str(self.data_dir.path),
            "data_dir_from": self.data_dir.origin.value,
            "files": {n: {"path": str(self.path(n)), "source": s.value} for n, s in self.sources.items()},
        }


def ensure_files(
    data_dir: DataDir | str | Path,
    names: Iterable[str],
    fallback: Fallback = Fallback.none,
    synthetic_dir: str | Path | None = None,
    seed: int = 0,
    manifest: Iterable[DataFile] | None = None,
    smartmoe: ConvertedTrace | None = None,
    base: str | None = None,
    timeout_s: float = FETCH_TIMEOUT_S,
) -> DataFiles:
    """The files `names` (relative to the data directory, or absolute) for a run, and where each came from.

    1. Files present in the data directory are used as they are.
    2. `fallback` none: a missing file is a FileNotFoundError naming the directory's origin and what to do.
    3. download or synthetic: missing files the manifest lists (`manifest`, `smartmoe`: common.datasets' by default)
       are fetched from `base` (common.datasets.GITHUB_RAW) into the data directory, sha256-checked, with a short
       timeout; download stops here if any is still missing.
    4. synthetic: each file still missing is written by common.synthetic into `synthetic_dir` (default
       <repo>/data/synthetic), the real ones present are linked beside them, and a warning says loudly that the run
       is synthetic, which files are missing and how to get them. A file with no stand-in is an error.
    """
    # Imported here: experiments/config.py imports this module for Fallback, and building a config must not load
    # numpy and the trace readers.
    from common import datasets

    data_dir = _as_data_dir(data_dir)
    names = list(dict.fromkeys(names))
    sources = {n: Source.real for n in names if (data_dir.path / n).is_file()}
    missing = [n for n in names if n not in sources]
    if not missing:  # Step 1
        _LOG.info("data: real files from %s", data_dir.describe())
        return DataFiles(data_dir.path, data_dir, sources)
    if fallback is Fallback.none:  # Step 2
        raise FileNotFoundError(missing_message(data_dir, missing))

    # Step 3
    manifest = datasets.MANIFEST if manifest is None else tuple(manifest)
    smartmoe = datasets.SMARTMOE if smartmoe is None else smartmoe
    entries = [e for e in manifest if e.path in missing]
    smart = smartmoe if {smartmoe.path, smartmoe.long_csv_path} & set(missing) else None
    problems = []
    if entries or smart is not None:
        _LOG.info("data: fetching %d missing file(s) into %s", len(entries) + (smart is not None), data_dir.path)
        problems = datasets.sync(
            data_dir.path, entries, smart, base=base or datasets.GITHUB_RAW, log=_LOG.info, timeout_s=timeout_s
        )
    for n in missing:
        if (data_dir.path / n).is_file():
            sources[n] = Source.downloaded
    missing = [n for n in missing if n not in sources]
    sources = {n: sources[n] for n in names if n in sources}  # in the order asked for
    fetch_note = f" (fetching failed: {problems[0]})" if problems else " (no public original to fetch)"
    fetch_line = f"fetching failed: {problems[0]}" if problems else "no public original to fetch"
    if not missing:
        _LOG.info("data: %s", DataFiles(data_dir.path, data_dir, sources).describe())
        return DataFiles(data_dir.path, data_dir, sources)
    if fallback is Fallback.download:
        raise FileNotFoundError(missing_message(data_dir, missing, fetch_note))

    # Step 4
    from common import synthetic

    no_stand_in = [n for n in missing if n not in synthetic.STAND_INS]
    if no_stand_in:
        raise FileNotFoundError(missing_message(data_dir, no_stand_in, f"{fetch_note} and it has no synthetic stand-in"))
    root = Path(synthetic_dir) if synthetic_dir is not None else REPO_ROOT / "data" / "synthetic"
    if root.resolve() == data_dir.path.resolve():  # stand-ins there would pass for real files on the next run
        raise ValueError(f"the synthetic stand-in folder {root} must not be the data directory itself")
    for n in missing:
        synthetic.write_stand_in(root, n, seed)
        sources[n] = Source.synthetic
    sources = {n: sources[n] for n in names}
    for n, s in sources.items():
        if s is not Source.synthetic and not Path(n).is_absolute():  # an absolute name resolves under any root
            _link(data_dir.path / n, root / n)
    files = DataFiles(root, data_dir, sources)
    _LOG.warning(
        "\n%s\n  THIS RUN USES SYNTHETIC DATA: made-up numbers in the real files' format, not the real traces.\n"
        "  missing real file(s): %s\n  looked in the data directory %s\n  %s\n  synthetic stand-ins written to %s\n"
        "  to run on the real data: %s (or pass paths.data_dir=DIR holding the files)\n%s",
        "=" * 100, ", ".join(missing), data_dir.describe(), fetch_line, root, data_dir.fetch_command(), "=" * 100,
    )
    return files


def _link(real: Path, dest: Path) -> None:
    """Make `dest` show the real file (a symlink, or a copy where links are not allowed)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and dest.resolve() == real.resolve():
        return
    if dest.is_symlink() or dest.exists():  # a stale link or copy from an earlier run
        dest.unlink()
    try:
        dest.symlink_to(real.resolve())
    except OSError:
        shutil.copyfile(real, dest)
