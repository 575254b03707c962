"""CSV output shared by the experiments: one writer, so every results CSV has the same layout."""

from __future__ import annotations

import csv
from pathlib import Path


def write_csv(path: Path, rows: list[dict], append: bool = False) -> None:
    """rows (dicts with the same keys, in column order) to a CSV with a header; nothing is written for no rows.
    append adds them, without a header, to a file an earlier call wrote with the same columns."""
    if not rows:
        return
    with open(path, "a" if append else "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if not append:
            w.writeheader()
        w.writerows(rows)
