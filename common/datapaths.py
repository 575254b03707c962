"""Where the real data lives. Entry points pass the environment in; library code never reads it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

ENV_VAR = "LOADWISE_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parent.parent


def resolve_data_dir(configured: str | Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """Data directory by precedence: $LOADWISE_DATA_DIR (in `env`), then `configured` (paths.data_dir),
    then ../shared/data beside the checkout when it exists, else ./data in the checkout."""
    if env and env.get(ENV_VAR):
        return Path(env[ENV_VAR]).expanduser()
    if configured:
        return Path(configured).expanduser()
    shared = REPO_ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else REPO_ROOT / "data"


def data_file(data_dir: Path, relative: str) -> Path:
    """A file under the data directory, with an error that says how to get it when it is missing."""
    path = Path(data_dir) / relative
    if not path.exists():
        raise FileNotFoundError(
            f"data file {path} not found; set paths.data_dir (or ${ENV_VAR}) to the data directory, "
            f"or fetch the public originals with `make data`"
        )
    return path
