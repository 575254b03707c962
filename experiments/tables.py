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


def headline_row(figure: str, setting: str, metric: str, ours: float, paper: float | None = None) -> dict:
    """One row of an experiment's `headline` (the few numbers a reader checks first, shown by experiment=repro's
    report): ours beside the paper's, error = (ours - paper) / paper, None where the paper has no such number."""
    ours = float(ours)
    paper = None if paper is None else float(paper)
    error = (ours - paper) / paper if paper else None
    return {"figure": figure, "setting": setting, "metric": metric, "ours": ours, "paper": paper, "error": error}
