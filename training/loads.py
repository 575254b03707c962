"""Expert loads during training and the planner in the loop: counts per micro-batch -> one gather per step -> a plan
per layer in the background -> the layout of a later step.

Notation: L MoE layers, N devices, E experts, M micro-batches per step, W planner window (micro-batches).

Per step (`LoadBalancer`):
  1. after every micro-batch `record()` stacks each layer's [E] `expert_counts` (left by DistributedMoE.dispatch)
  2. `end_step()`: one all_gather of this rank's [M, L, E] counts, so every rank holds the same [M, L, N, E]; they
     join the history of the last W micro-batches
  3. the plans submitted at the end of the previous step (planned in the background during this step) are taken,
     waiting only if one is still running (the wait is the planner time on the critical path, measured), and set
     on the layers: they apply from the next step's restore on. A layout is therefore built from loads that end
     one full step before the step that uses it (a one-step lag)
  4. each layer's window sum [N, E] goes to its AsyncPlanner.

Plans are identical on every rank because every rank runs the same deterministic planner on identical inputs (the
gathered history) and takes the plan of a fixed submission (the previous step's), never "whatever finished first",
which would depend on each rank's timing. `layout_digest` lets a test (or a paranoid run) check it across ranks.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from training.fsep.layer import DistributedMoE, FSEPMoE
from training.placement import Placement
from training.planner import AsyncPlanner, Planner
from training.routing import fsep_summary


@dataclass(frozen=True)
class StepLoads:
    """What one step's gather tells the logs."""

    counts: np.ndarray  # [M, L, N, E] routes from source device i to expert j, per micro-batch and layer
    device_tokens: np.ndarray  # [L, N] routes each device computed in this step (FSEP rule on the layout used)
    wait_s: float  # time this step waited for the previous step's plans (planner time on the critical path)
    solve_s: float  # planner time of the plans taken this step, summed over layers (spent in the background)
    plan_lag: int | None  # steps between the newest loads a layout in force next step saw and that step (None: no plan)


class _TimedPlanner:
    """A planner that remembers the thread CPU time of its last plan (it runs on the AsyncPlanner's worker thread, so
    thread time is its own solve time, undistorted by the training step on the other threads)."""

    def __init__(self, planner: Planner):
        self.planner, self.name, self.n, self.c = planner, planner.name, planner.n, planner.c
        self.last_solve_s = 0.0

    def plan(self, loads):
        t0 = time.thread_time()
        plan = self.planner.plan(loads)
        self.last_solve_s = time.thread_time() - t0
        return plan


class LoadBalancer:
    """Records every layer's expert counts, gathers them once per step and keeps the FSEP layers' layouts planned.

    `planner` None records and gathers only (static layouts: EP, FSDP+EP); the layouts never change."""

    def __init__(self, layers: list[DistributedMoE], group, planner: Planner | None, window: int):
        if window < 1:
            raise ValueError(f"planner.window must be >= 1 micro-batch, got {window}")
        if planner is not None and not all(isinstance(m, FSEPMoE) for m in layers):
            raise ValueError("a planner re-lays out FSEP layers only; EP layers have a fixed layout")
        self.layers, self.group, self.window = layers, group, window
        self.history: deque[np.ndarray] = deque(maxlen=window)  # [L, N, E] per micro-batch, newest last
        self._micro: list[np.ndarray] = []  # this step's [L, E] per micro-batch (this rank only)
        self._timed = [_TimedPlanner(planner) for _ in layers] if planner is not None else []
        self._planners = [AsyncPlanner(t) for t in self._timed]
        self._submitted: int | None = None  # step whose window the planners are working on
        self._plan_step: int | None = None  # step whose window the layouts in force were planned from

    def record(self) -> None:
        """After a micro-batch's forward: this rank's [L, E] counts of it."""
        missing = [i for i, m in enumerate(self.layers) if m.expert_counts is None]
        if missing:
            raise RuntimeError(f"MoE layers {missing} ran no forward since the last record()")
        self._micro.append(np.stack([m.expert_counts for m in self.layers]))
        for m in self.layers:
            m.expert_counts = None

    def end_step(self, step: int) -> StepLoads:
        """Steps 2-4 of the module docstring (communicates: one all_gather)."""
        counts = self._gather()  # [M, L, N, E]
        tokens = self._device_tokens(counts)  # on the layouts this step used
        self.history.extend(counts)
        wait_s, solve_s = 0.0, 0.0
        if self._planners:
            if self._submitted is not None:  # Step 3
                t0 = time.perf_counter()
                plans = [p.wait() for p in self._planners]
                wait_s = time.perf_counter() - t0
                for layer, (planned_step, plan) in zip(self.layers, plans):
                    assert planned_step == self._submitted, "a plan of another step came back"
                    layer.set_placement(plan.layout, None if plan.fsep_routed else plan.routing)
                solve_s = sum(t.last_solve_s for t in self._timed)
                self._plan_step = self._submitted
            window = np.sum(self.history, axis=0)  # [L, N, E]  Step 4
            for p, loads in zip(self._planners, window):
                p.submit(step, loads)
            self._submitted = step
        lag = None if self._plan_step is None else step + 1 - self._plan_step
        return StepLoads(counts, tokens, wait_s, solve_s, lag)

    def _gather(self) -> np.ndarray:
        mine = torch.from_numpy(np.stack(self._micro))  # [M, L, E]
        self._micro = []
        n = dist.get_world_size(self.group)
        dev = self.layers[0].router.weight.device
        buf = torch.empty((n * mine.shape[0],) + tuple(mine.shape[1:]), dtype=mine.dtype, device=dev)
        dist.all_gather_single(buf, mine.to(dev), group=self.group)  # [N*M, L, E], source-major
        return buf.cpu().numpy().reshape((n,) + mine.shape).transpose(1, 2, 0, 3).copy()  # -> [M, L, N, E]

    def _device_tokens(self, counts: np.ndarray) -> np.ndarray:
        """[L, N] routes each device computed this step under the FSEP rule on each layer's layout."""
        step = counts.sum(0)  # [L, N, E]
        return np.stack([fsep_summary(step[i], m.placement, m.groups.devices_per_node).device_tokens
                         for i, m in enumerate(self.layers)])

    def layouts(self) -> list[Placement]:
        return [m.placement for m in self.layers]

    def layout_digest(self) -> torch.Tensor:
        """[L * N * C] int64 of every layer's slots: equal on all ranks iff the layouts are (tests all_gather it)."""
        return torch.from_numpy(np.concatenate([m.placement.slots.ravel() for m in self.layers]))

    # ---- checkpoint ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """History, layouts in force and the pending submission: enough to resume with the same layouts and plans.
        Layout-free of N only through the history's source axis, so `load_state_dict` on another N re-plans."""
        return {"history": [h.copy() for h in self.history], "submitted": self._submitted,
                "plan_step": self._plan_step,
                "layouts": [(m.placement.slots.copy(), getattr(m, "routing_fractions", None)) for m in self.layers]}

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved state. Same N: layouts and the pending plan exactly as saved. Another N: the saved
        history's sources are merged or split evenly is not defined, so the history restarts and layouts stay default
        until the new run's first plan (training is still exact: a layout never changes the maths)."""
        n = dist.get_world_size(self.group)
        history = state["history"]
        if history and history[0].shape[1] != n:
            return
        self.history.clear()
        self.history.extend(history)
        if self._planners:
            for m, (slots, fractions) in zip(self.layers, state["layouts"]):
                m.set_placement(Placement(slots, m.num_experts), fractions)
            self._plan_step = state["plan_step"]
            self._submitted = state["submitted"]
            if self._submitted is not None and self.history:  # re-submit the pending window: same plan, same step
                for p, loads in zip(self._planners, np.sum(self.history, axis=0)):
                    p.submit(self._submitted, loads)

    def close(self) -> None:
        for p in self._planners:
            p.close()
