"""Whether the planners run their inner loops compiled (numba, `kernels`) or in numpy; both give the same plans.

`import training.planner` does not import numba (about half a second): `kernels()` imports it on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from functools import cache
from types import ModuleType

import numpy as np

HAVE_NUMBA = importlib.util.find_spec("numba") is not None


def resolve_jit(jit: bool | None) -> bool:
    """None: compiled kernels when numba is installed; True requires numba; False forces the numpy path."""
    if jit is None:
        return HAVE_NUMBA
    if jit and not HAVE_NUMBA:
        raise ValueError("jit=True needs numba (pip install numba); jit=False takes the numpy path")
    return bool(jit)


@cache  # a plain dict lookup after the first call: planners ask for it several times per plan
def kernels() -> ModuleType:
    """The compiled kernels module (imported, hence numba too, on first call)."""
    return importlib.import_module("training.planner.kernels")


def warm_up() -> float:
    """Compile every kernel, or load it from numba's disk cache, on a tiny instance; the seconds it took (0 without
    numba). Planning calls this implicitly on first use; benchmarks call it to time compilation apart from solving."""
    if not HAVE_NUMBA:
        return 0.0
    t0 = time.perf_counter()
    kern = kernels()
    w = np.arange(1.0, 5.0)
    r = kern.priority_counts(w, 8, 2)
    kern.greedy_increments(w, np.ones(4, dtype=np.int64), 4)
    slots = kern.lpt_slots(w / r, r, 4, 2, 2)
    cost = np.ones(4)
    kern.exact_costs(np.ones((4, 4), dtype=np.int64), slots[None], 2, cost)
    kern.expected_costs(np.ones((4, 4), dtype=np.int64), slots[None], 4, 2, cost)
    kern.numpy_sum(w)
    kern.pack_balanced(w, np.arange(4), 2)
    kern.eplb_node_layouts(w, np.arange(2), 2, 2, 2, 2)
    return time.perf_counter() - t0
