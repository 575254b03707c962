"""Planning off the training step: a background worker that plans the newest submitted loads.

Deterministic: a plan depends only on the loads submitted with its step, so ranks that submit identical loads get
identical plans. A newer submission supersedes one not yet started (the runtime only wants the freshest plan).
"""

from __future__ import annotations

import threading

import numpy as np

from training.planner.base import Plan, Planner, check_loads


class AsyncPlanner:
    def __init__(self, planner: Planner):
        self.planner = planner
        self._cv = threading.Condition()
        self._pending: tuple[int, np.ndarray] | None = None  # newest submission not yet started
        self._latest: tuple[int, Plan] | None = None  # newest finished (step, plan)
        self._error: BaseException | None = None  # raised to the caller by latest()/wait()
        self._closed = False
        self._busy = False
        self._thread = threading.Thread(target=self._work, name=f"planner-{planner.name}", daemon=True)
        self._thread.start()

    def submit(self, step: int, loads) -> None:
        """Queue loads [N, E] observed up to `step` (or the window [W, N, E] of micro-batches they sum, which LAER+
        scores its candidates on); returns at once. Bad loads raise here, not in the worker."""
        loads = check_loads(loads, self.planner.n, self.planner.c).copy()
        with self._cv:
            if self._closed:
                raise RuntimeError("AsyncPlanner is closed")
            self._pending = (int(step), loads)
            self._cv.notify_all()

    def latest(self) -> tuple[int, Plan] | None:
        """(step, plan) of the newest finished plan, or None before the first one finishes."""
        with self._cv:
            if self._error is not None:
                raise RuntimeError("planner worker failed") from self._error
            return self._latest

    def wait(self, timeout: float | None = None) -> tuple[int, Plan] | None:
        """Block until nothing is pending or running (tests, end of training); then latest()."""
        with self._cv:
            self._cv.wait_for(lambda: (self._pending is None and not self._busy) or self._error is not None, timeout)
        return self.latest()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _work(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:
                    return
                step, loads = self._pending
                self._pending = None
                self._busy = True
            try:
                plan = self.planner.plan(loads)
            except BaseException as err:  # surfaced to the caller by latest()
                with self._cv:
                    self._error, self._busy = err, False
                    self._cv.notify_all()
                return
            with self._cv:
                if self._latest is None or step >= self._latest[0]:
                    self._latest = (step, plan)
                self._busy = False
                self._cv.notify_all()
