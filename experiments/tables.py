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


def rel_error(ours: float | None, paper: float | None) -> float | None:
    """(ours - paper) / paper, or None when either is missing (or the paper's is 0)."""
    if ours is None or paper is None or paper == 0:
        return None
    return (ours - paper) / paper


def headline_row(figure: str, setting: str, metric: str, ours: float, paper: float | None = None) -> dict:
    """One row of an experiment's `headline` (the few numbers a reader checks first, shown by experiment=repro's
    report): ours beside the paper's, error = (ours - paper) / paper, None where the paper has no such number."""
    ours = float(ours)
    paper = None if paper is None else float(paper)
    return {"figure": figure, "setting": setting, "metric": metric, "ours": ours, "paper": paper,
            "error": rel_error(ours, paper)}
