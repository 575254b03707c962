"""The one plotting helper every experiment uses: one style, a title naming the run's settings, markers so lines that
overlap stay visible, paper values drawn as reference markers, a legend per panel outside the data.

    fig, axes = plotting.figure(1, 3, "Planner solve time", settings={"E": 32, "machine": "this CPU"})
    plotting.line(axes[0], x, y, "laer", index=0)
    plotting.reference(axes[0], xs, ys, "paper (C++, their GPU host)")
    plotting.save(fig, out_dir / "speed.png")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window

import matplotlib.pyplot as plt  # noqa: E402

MARKERS = "osD^vP*Xh<>"
LINESTYLES = ("-", "--", "-.", ":")
STYLE = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": 120,
}
matplotlib.rcParams.update(STYLE)


def settings_line(settings: Mapping[str, object]) -> str:
    """'model llama2-70b · cluster h100_80g_4x8 · …' from a dict of the settings that define the run."""
    return " · ".join(f"{k} {v}" for k, v in settings.items())


def figure(nrows: int, ncols: int, title: str, settings: Mapping[str, object] | None = None,
           panel_size: tuple[float, float] = (4.6, 3.4), sharey: bool | str = False):
    """A figure of nrows x ncols panels (axes always 2-D), titled with what it shows and the run's settings."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows + 0.6),
                             squeeze=False, sharey=sharey)
    fig.suptitle(title if not settings else f"{title}\n{settings_line(settings)}", fontsize=11)
    return fig, axes


def line(ax, x: Sequence, y: Sequence, label: str, index: int = 0, **kwargs):
    """A data line whose marker and dash differ by `index`, so identical lines remain distinguishable."""
    kw = {"marker": MARKERS[index % len(MARKERS)], "linestyle": LINESTYLES[index % len(LINESTYLES)],
          "markersize": 5, "linewidth": 1.3, "markerfacecolor": "none" if index % 2 else None, "label": label}
    kw.update(kwargs)
    return ax.plot(x, y, **kw)


def reference(ax, x: Sequence, y: Sequence, label: str = "paper"):
    """Published values as black crosses joined by a thin dotted line: the target to read our lines against."""
    return ax.plot(x, y, color="black", marker="x", linestyle=":", linewidth=1.0, markersize=6, label=label, zorder=5)


def hline(ax, y: float, label: str | None = None):
    """A horizontal reference level (e.g. a lower bound, or 1.0 = perfect balance)."""
    return ax.axhline(y, color="gray", linewidth=0.8, linestyle="--", label=label)


def heatmap(ax, values, xlabels: Sequence, ylabels: Sequence, label: str, center: float | None = None):
    """A grid of values [len(ylabels), len(xlabels)] with each cell's number written in it; `center` (e.g. 1.0 for a
    ratio) puts a diverging colour map's midpoint there, so both directions read at a glance."""
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    v = np.asarray(values, float)
    norm = None
    if center is not None and np.isfinite(v).any():
        lo, hi = np.nanmin(v), np.nanmax(v)
        norm = TwoSlopeNorm(vcenter=center, vmin=min(lo, center - 1e-6), vmax=max(hi, center + 1e-6))
    im = ax.imshow(v, cmap="RdBu" if center is not None else "viridis", norm=norm, aspect="auto", origin="lower")
    ax.set_xticks(range(len(xlabels)), [str(x) for x in xlabels])
    ax.set_yticks(range(len(ylabels)), [str(y) for y in ylabels])
    ax.grid(False)
    for (i, j), x in np.ndenumerate(v):
        ax.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=8)
    ax.figure.colorbar(im, ax=ax, label=label)
    return im


def legend(ax, outside: bool = False):
    """The panel's legend: beside the axes when `outside` (many entries), else at the best spot inside."""
    if outside:
        return ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return ax.legend(loc="best", framealpha=0.8)


def save(fig, path: str | Path) -> Path:
    """Lay out and write the figure, then free it."""
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
