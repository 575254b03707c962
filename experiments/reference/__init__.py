"""External reference numbers (published or peer-tool figures), one JSON file each with its source and setting, so
no experiment types them in by hand. `load(name)` reads one; a relative name is looked up beside this file."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIRED = ("source", "setting")


def load(name: str | Path) -> dict:
    path = Path(name).expanduser()
    path = path if path.is_absolute() else HERE / path
    if not path.exists():
        raise FileNotFoundError(f"reference file {path} not found; known: {sorted(p.name for p in HERE.glob('*.json'))}")
    ref = json.loads(path.read_text())
    missing = [k for k in REQUIRED if k not in ref]
    if missing:
        raise ValueError(f"reference file {path}: missing {missing} (every reference names its source and setting)")
    return ref
