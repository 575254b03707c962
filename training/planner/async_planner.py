"""Planning off the training step: a planner in its own Python process, fed over a pipe.

Notation: L independent planning problems per submission (one per MoE layer), N devices, E experts.

Why a process, not a thread. A thread plans under the interpreter lock and stalls the training step's Python while
it does (measured on the trainer: 0.80 s/step with a planner thread against 0.57 s/step with this process). A
subprocess rather than multiprocessing: ranks launched by common.launch are daemonic and may not start
multiprocessing children.

How the runtime uses it (training.loads.LoadBalancer): one rank plans and broadcasts the layouts, so every rank
applies the same plan (the planner is deterministic too: a plan depends only on the loads submitted with it). Plans
take effect at step boundaries only: every rank must agree on which plan is current, and a switch inside a step
(say, at the next MoE layer's restore) would need a collective in the middle of the forward to agree on it.
"""

from __future__ import annotations

import os
import pickle
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.planner.base import Plan, Planner, check_loads


@dataclass(frozen=True)
class Layout:
    """What the runtime takes of a Plan (a Plan itself holds its routing builder, which does not pickle)."""

    slots: np.ndarray  # [N, C] expert held by each slot (Plan.layout.slots)
    routing: np.ndarray | None  # [N, E, N] the plan's explicit routing (Plan.routing); None: the FSEP rule
    device_tokens: np.ndarray  # [N] tokens each device computes under the plan (Plan.device_tokens)

    @classmethod
    def of(cls, plan: Plan) -> Layout:
        return cls(plan.layout.slots, None if plan.fsep_routed else np.asarray(plan.routing, dtype=np.float64),
                   plan.device_tokens)


@dataclass(frozen=True)
class PlanResult:
    """The planner's answer to one submission."""

    step: int  # the step the submitted loads were observed up to
    plans: list[Layout]  # one per submitted problem (MoE layer), in order
    solve_s: float  # planner CPU seconds over all problems (process time in the planner process)


class AsyncPlanner:
    """`submit(step, loads)` with loads [L, N, E] returns at once; `wait()` returns the PlanResult of the newest
    submission (older answers not yet collected are dropped: the runtime only wants the freshest plan)."""

    def __init__(self, planner: Planner):
        self.planner = planner
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([root] + os.environ.get("PYTHONPATH", "").split(os.pathsep)),
               "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}  # one core's worth: the ranks need the others
        self._proc = subprocess.Popen([sys.executable, "-m", "training.planner.async_planner"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, env=env)
        self._outstanding: list[int] = []  # steps submitted and not yet answered, oldest first
        self._send(planner)

    def _send(self, obj) -> None:
        pickle.dump(obj, self._proc.stdin)
        self._proc.stdin.flush()

    def submit(self, step: int, loads) -> None:
        """Queue loads [L, N, E] observed up to `step`. Bad loads raise here, not in the planner process."""
        loads = np.asarray(loads)
        if loads.ndim != 3:
            raise ValueError(f"AsyncPlanner.submit takes loads [L, N, E], got shape {loads.shape}")
        loads = np.stack([check_loads(x, self.planner.n, self.planner.c) for x in loads])
        if self._proc.poll() is not None:
            raise RuntimeError(f"planner process exited (code {self._proc.returncode}); its error is on stderr")
        self._send((int(step), loads))
        self._outstanding.append(int(step))

    def ready(self) -> bool:
        """True when wait() would return without blocking (the newest submission is planned)."""
        if len(self._outstanding) != 1:  # wait() drains older answers first: not a single read
            return False
        return bool(select.select([self._proc.stdout], [], [], 0)[0])

    def wait(self) -> PlanResult:
        """Block until the newest submission is planned; its result."""
        if not self._outstanding:
            raise RuntimeError("AsyncPlanner.wait: nothing submitted")
        while True:
            try:
                reply = pickle.load(self._proc.stdout)
            except EOFError:
                raise RuntimeError(f"planner process exited (code {self._proc.wait()}); its error is on stderr") from None
            step = self._outstanding.pop(0)
            if isinstance(reply, BaseException):
                raise RuntimeError(f"planner failed on the loads of step {step}") from reply
            if not self._outstanding:
                return reply

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._send(None)
                self._proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            self._proc.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _serve(stdin, stdout) -> None:
    """The planner process: a pickled Planner, then (step, loads [L, N, E]) until None."""
    planner = pickle.load(stdin)
    while (msg := pickle.load(stdin)) is not None:
        step, loads = msg
        t0 = time.process_time()
        try:
            # Layout.of builds an explicit routing here, off the training ranks.
            plans = [Layout.of(planner.plan(x)) for x in loads]
            out = PlanResult(step, plans, time.process_time() - t0)
        except Exception as err:  # the caller raises it
            out = err
        pickle.dump(out, stdout)
        stdout.flush()


if __name__ == "__main__":
    # Through the imported module, so the replies pickle as training.planner.async_planner classes, not __main__'s.
    from training.planner import async_planner

    async_planner._serve(sys.stdin.buffer, sys.stdout.buffer)
