"""Planner solve time beside the LAER-MoE paper's Fig. 11 (E = 32 experts, random loads, N devices x C slots), and on
skewed loads (`loads=zipf`, E = 64 as well).

Solve time covers the placement and device_tokens (the routing tensor is built lazily and is not timed), median of
`repeats` random load matrices after one warm-up plan: warm solves, as the paper's compiled C++ is timed. Each solve
is timed in wall-clock time (ours_s, the paper's measure) and in the thread's CPU time (cpu_s: the fair figure on a
machine that other processes load; at_or_under compares it with the paper's). laer_plus runs its fast path: its time
budget is the paper's time at each (N, C) unless `laer_plus_budget_s` says otherwise. Compiling the numba kernels (or loading them from numba's disk cache) is timed
once, apart, and reported as compile_s.
Writes speed.csv, speed.json and speed.png.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from common.datapaths import ensure_files, locate_data_dir
from experiments import plotting
from experiments.config import LoadKind
from experiments.tables import headline_row, write_csv
from training.planner import kernels, make_planner

log = logging.getLogger(__name__)


def read_paper_times(path: Path) -> dict[tuple[int, int], float]:
    out = {}
    with open(path) as f:
        for line_no, row in enumerate(csv.DictReader(f), start=2):
            try:
                out[(int(row["n_device"]), int(row["C_e"]))] = float(row["time"])
            except (KeyError, ValueError) as err:
                raise ValueError(f"{path}:{line_no}: expected n_device,C_e,time ({err})") from None
    return out


def zipf_weights(rng: np.random.Generator, n: int, e: int, exponent: float = 1.0,
                 concentration: float = 100.0) -> np.ndarray:
    """[N, E] per-source routing probabilities: a Zipf popularity over a random expert order, each source's own
    weights drawn Dirichlet(concentration * popularity) around it (larger concentration: sources agree more)."""
    popularity = 1.0 / np.arange(1, e + 1) ** exponent
    popularity = popularity[rng.permutation(e)] / popularity.sum()
    return np.stack([rng.dirichlet(concentration * popularity + 1e-3) for _ in range(n)])


def random_loads(rng: np.random.Generator, n: int, e: int, tokens: int,
                 kind: LoadKind = LoadKind.dirichlet, zipf_exponent: float = 1.0) -> np.ndarray:
    """[N, E] tokens: each source routes `tokens` to experts by its own weights (`LoadKind`)."""
    if LoadKind(kind) is LoadKind.zipf:
        p = zipf_weights(rng, n, e, zipf_exponent)
    else:
        p = np.stack([rng.dirichlet(np.ones(e)) for _ in range(n)])
    return np.stack([rng.multinomial(tokens, p[i]) for i in range(n)])


def run(cfg: DictConfig, out_dir: Path) -> dict:
    sc = cfg.planner_speed
    files = ensure_files(locate_data_dir(cfg.paths.data_dir, os.environ), [sc.paper_results],
                         cfg.paths.fallback, synthetic_dir=out_dir / "synthetic_data")
    paper = read_paper_times(files.path(sc.paper_results))
    rng = np.random.default_rng(sc.seed)
    compile_s = kernels.warm_up()
    log.info("numba kernels: compiled or loaded from cache in %.2f s (not in the timings below)", compile_s)
    rows = []
    grid = [(n, c) for n in sc.devices for c in sc.slots]
    for n, c in tqdm(grid, desc="planner_speed", leave=False):
        if n * c < sc.num_experts:
            continue
        loads = [random_loads(rng, n, sc.num_experts, sc.tokens_per_device, sc.loads, sc.zipf_exponent)
                 for _ in range(sc.repeats)]
        ref = paper.get((int(n), int(c)))
        for name in sc.algorithms:
            options = {}
            if name == "laer_plus":
                budget = sc.laer_plus_budget_s if sc.laer_plus_budget_s is not None else ref
                options = {} if budget is None else {"time_budget_s": float(budget)}
            planner = make_planner(name, int(n), int(c), int(sc.devices_per_node), **options)
            planner.plan(loads[0])  # warm-up (imports, caches)
            times, cpu = [], []
            for x in loads:
                t0, c0 = time.perf_counter(), time.thread_time()
                plan = planner.plan(x)
                _ = plan.device_tokens
                cpu.append(time.thread_time() - c0)
                times.append(time.perf_counter() - t0)
            ours, ours_cpu = float(np.median(times)), float(np.median(cpu))
            rows.append({"algorithm": name, "N": int(n), "C": int(c), "ours_s": ours, "max_s": float(np.max(times)),
                         "cpu_s": ours_cpu, "budget_s": options.get("time_budget_s", ""),
                         "paper_s": ref if ref is not None else "", "ratio": ours / ref if ref else "",
                         "cpu_ratio": ours_cpu / ref if ref else "", "at_or_under": (ours_cpu <= ref) if ref else ""})
    write_csv(out_dir / "speed.csv", rows)
    (out_dir / "speed.json").write_text(json.dumps({"compile_s": compile_s, "rows": rows}, indent=1))
    lines = [f"loads {LoadKind(sc.loads).value}, E = {sc.num_experts}; at or under the paper (CPU time): "
             f"{sum(r['at_or_under'] is True for r in rows)}/{sum(r['paper_s'] != '' for r in rows)}",
             f"{'algorithm':10s} {'N':>5s} {'C':>3s} {'ours ms':>9s} {'cpu ms':>9s} {'paper ms':>9s} {'ratio':>6s}"
             f" {'cpu ratio':>9s}"]
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] != "" else ""
        cpu_ratio = f"{r['cpu_ratio']:.2f}" if r["cpu_ratio"] != "" else ""
        paper_ms = f"{r['paper_s'] * 1e3:9.3f}" if r["paper_s"] != "" else f"{'':9s}"
        lines.append(f"{r['algorithm']:10s} {r['N']:5d} {r['C']:3d} {r['ours_s'] * 1e3:9.3f} {r['cpu_s'] * 1e3:9.3f}"
                     f" {paper_ms} {ratio:>6s} {cpu_ratio:>9s}")
    log.info("\n".join(lines))
    _plot(rows, paper, list(sc.slots), int(sc.num_experts), LoadKind(sc.loads).value, out_dir / "speed.png")
    return {"rows": rows, "compile_s": compile_s, "headline": headline(rows)}


def headline(rows: list[dict]) -> list[dict]:
    """Per algorithm, CPU solve time at the smallest and the largest (N, C) the paper timed."""
    out = []
    for alg in dict.fromkeys(r["algorithm"] for r in rows):
        timed = sorted((r for r in rows if r["algorithm"] == alg and r["paper_s"] != ""), key=lambda r: (r["N"], r["C"]))
        ends = timed[:1] + timed[1:][-1:]  # the smallest and the largest, once each
        out += [headline_row("Fig. 11", f"{alg}, N={r['N']}, C={r['C']}", "planner solve time (s, CPU)", r["cpu_s"],
                             r["paper_s"]) for r in ends]
    return out


def _plot(rows, paper, slots, num_experts: int, loads: str, path: Path) -> None:
    ncols = min(3, len(slots))
    nrows = -(-len(slots) // ncols)
    fig, axes = plotting.figure(
        nrows, ncols, "Planner solve time vs. the LAER-MoE paper (Fig. 11)",
        {"E": num_experts, "loads": loads, "ours": f"Python + numba on this machine ({platform.machine()})",
         "paper": "their C++ on their host"}, sharey=True)
    algorithms = sorted({r["algorithm"] for r in rows})
    for ax, c in zip(axes.flat, slots):
        for i, alg in enumerate(algorithms):
            sel = [r for r in rows if r["algorithm"] == alg and r["C"] == c]
            fast = any(r["budget_s"] != "" for r in sel)  # laer_plus on its fast path
            label = f"{alg}, fast path (CPU time)" if fast else f"{alg} (CPU time)"
            plotting.line(ax, [r["N"] for r in sel], [r["cpu_s"] * 1e3 for r in sel], label, index=i)
        ref = sorted((n, t) for (n, cc), t in paper.items() if cc == c)
        plotting.reference(ax, [n for n, _ in ref], [t * 1e3 for _, t in ref], "paper (C++)")
        ax.set(xscale="log", yscale="log", title=f"C = {c} slots per device", xlabel="devices N",
               ylabel="solve time (ms)")
        ax.set_xscale("log", base=2)
        plotting.legend(ax)
    for ax in list(axes.flat)[len(slots):]:
        ax.set_visible(False)
    plotting.save(fig, path)
