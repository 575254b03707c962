"""Planner solve time beside the LAER-MoE paper's Fig. 11 (E = 32 experts, random loads, N devices x C slots).

Solve time covers the placement and device_tokens (the routing tensor is built lazily and is not timed), median of
`repeats` random load matrices after one warm-up plan: warm solves, as the paper's compiled C++ is timed. Compiling
the numba kernels (or loading them from numba's disk cache) is timed once, apart, and reported as compile_s.
Writes speed.csv, speed.json and speed.png.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from common.datapaths import ensure_files, locate_data_dir
from training.planner import accel, make_planner


def read_paper_times(path: Path) -> dict[tuple[int, int], float]:
    out = {}
    with open(path) as f:
        for line_no, row in enumerate(csv.DictReader(f), start=2):
            try:
                out[(int(row["n_device"]), int(row["C_e"]))] = float(row["time"])
            except (KeyError, ValueError) as err:
                raise ValueError(f"{path}:{line_no}: expected n_device,C_e,time ({err})") from None
    return out


def random_loads(rng: np.random.Generator, n: int, e: int, tokens: int) -> np.ndarray:
    """[N, E] tokens: each source spreads `tokens` over experts with its own Dirichlet(1) weights."""
    return np.stack([rng.multinomial(tokens, rng.dirichlet(np.ones(e))) for _ in range(n)])


def run(cfg: DictConfig, out_dir: Path) -> dict:
    sc = cfg.planner_speed
    files = ensure_files(locate_data_dir(cfg.paths.data_dir, os.environ), [sc.paper_results],
                         cfg.paths.fallback, synthetic_dir=out_dir / "synthetic_data")
    paper = read_paper_times(files.path(sc.paper_results))
    rng = np.random.default_rng(sc.seed)
    compile_s = accel.warm_up()  # 0 without numba (numpy path)
    where = f"compiled or loaded from cache in {compile_s:.2f} s" if accel.HAVE_NUMBA else "absent, numpy path"
    print(f"numba kernels: {where}")
    rows = []
    grid = [(n, c) for n in sc.devices for c in sc.slots]
    for n, c in tqdm(grid, desc="planner_speed"):
        if n * c < sc.num_experts:
            continue
        loads = [random_loads(rng, n, sc.num_experts, sc.tokens_per_device) for _ in range(sc.repeats)]
        for name in sc.algorithms:
            planner = make_planner(name, int(n), int(c), int(sc.devices_per_node))
            planner.plan(loads[0])  # warm-up (imports, caches)
            times = []
            for x in loads:
                t0 = time.perf_counter()
                plan = planner.plan(x)
                _ = plan.device_tokens
                times.append(time.perf_counter() - t0)
            ours = float(np.median(times))
            ref = paper.get((int(n), int(c)))
            rows.append({"algorithm": name, "N": int(n), "C": int(c), "ours_s": ours, "max_s": float(np.max(times)),
                         "paper_s": ref if ref is not None else "",
                         "ratio": ours / ref if ref else "", "at_or_under": (ours <= ref) if ref else ""})
    with open(out_dir / "speed.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out_dir / "speed.json").write_text(json.dumps({"compile_s": compile_s, "jit": accel.HAVE_NUMBA, "rows": rows},
                                                   indent=1))
    print(f"{'algorithm':10s} {'N':>5s} {'C':>3s} {'ours ms':>9s} {'paper ms':>9s} {'ratio':>6s}")
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] != "" else ""
        paper_ms = f"{r['paper_s'] * 1e3:9.3f}" if r["paper_s"] != "" else f"{'':9s}"
        print(f"{r['algorithm']:10s} {r['N']:5d} {r['C']:3d} {r['ours_s'] * 1e3:9.3f} {paper_ms} {ratio:>6s}")
    _plot(rows, paper, list(sc.slots), out_dir / "speed.png")
    return {"rows": rows, "compile_s": compile_s}


def _plot(rows, paper, slots, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(slots), figsize=(4 * len(slots), 3.5), squeeze=False)
    for ax, c in zip(axes[0], slots):
        for alg in sorted({r["algorithm"] for r in rows}):
            sel = [r for r in rows if r["algorithm"] == alg and r["C"] == c]
            ax.plot([r["N"] for r in sel], [r["ours_s"] for r in sel], "o-", label=alg)
        ref = sorted((n, t) for (n, cc), t in paper.items() if cc == c)
        ax.plot([n for n, _ in ref], [t for _, t in ref], "k--", label="paper (C++)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"C = {c}")
        ax.set_xlabel("devices N")
        ax.set_ylabel("solve time (s)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
