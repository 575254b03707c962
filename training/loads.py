"""Expert loads during training and the planner in the loop: counts per micro-batch -> one gather per step -> a plan
per layer in the background -> the layout of a later step.

Notation: L MoE layers, N devices, E experts, M micro-batches per step, W planner window (micro-batches).

Per step (`LoadBalancer`):
  1. after every micro-batch `record()` stacks each layer's [E] `expert_counts` (left by DistributedMoE.dispatch)
  2. `end_step()`: one all_gather of this rank's [M, L, E] counts, so every rank holds the same [M, L, N, E]; they
     join the history of the last W micro-batches
  3. rank 0 takes the plans of the pending submission (planned in the background during this step) and broadcasts
     their layouts; every rank sets them on its layers, from the next step's restore on. If they are still running,
     rank 0 waits for them (`wait_for_plans`: the wait is the planner time on the critical path, measured; a layout
     is then built from loads that end one full step before the step that uses it) or, without wait_for_plans,
     broadcasts "no new plan" and tries again next step (no wait; the lag grows by a step instead, and which step a
     plan lands on then depends on timing, so runs are not bit-reproducible)
  4. with nothing pending, rank 0 submits every layer's window sum [N, E] to its planner process.

Plans are identical on every rank because one rank plans and broadcasts them (`layout_digest` lets a test check it).
The planner runs in its own process (`training.planner.AsyncPlanner`, which says why not a thread); planning once
rather than on every rank leaves the other ranks' CPUs to training. Layouts change only at step boundaries (step 3):
every rank must agree on the plan in force, and switching inside a step would need a collective mid-forward.
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
    wait_s: float  # time rank 0 waited for the previous step's plans (planner time on the critical path; 0 elsewhere)
    solve_s: float  # planner CPU time of the plans taken this step, all layers (in the background; 0 off rank 0)
    plan_lag: int | None  # steps between the newest loads a layout in force next step saw and that step (None: no plan)


class _NotReady(Exception):
    """Rank 0's plans are still running and the balancer does not wait for them."""


class LoadBalancer:
    """Records every layer's expert counts, gathers them once per step and keeps the FSEP layers' layouts planned.

    `planner` None records and gathers only (static layouts: EP, FSDP+EP); the layouts never change."""

    def __init__(self, layers: list[DistributedMoE], group, planner: Planner | None, window: int,
                 wait_for_plans: bool = True):
        if window < 1:
            raise ValueError(f"planner.window must be >= 1 micro-batch, got {window}")
        if planner is not None and not all(isinstance(m, FSEPMoE) for m in layers):
            raise ValueError("a planner re-lays out FSEP layers only; EP layers have a fixed layout")
        self.layers, self.group, self.window, self.wait_for_plans = layers, group, window, wait_for_plans
        self.history: deque[np.ndarray] = deque(maxlen=window)  # [L, N, E] per micro-batch, newest last
        self._micro: list[np.ndarray] = []  # this step's [L, E] per micro-batch (this rank only)
        self.planning = planner is not None
        self._process = AsyncPlanner(planner) if self.planning and dist.get_rank(group) == 0 else None
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
        if self.planning:
            if self._submitted is not None:  # Step 3
                layouts, solve_s, wait_s = self._collect()
                if layouts is not None:
                    for layer, (slots, fractions) in zip(self.layers, layouts):
                        layer.set_placement(Placement(slots, layer.num_experts), fractions)
                    self._plan_step, self._submitted = self._submitted, None
            if self._submitted is None:
                self._submit(step)  # Step 4
        lag = None if self._plan_step is None else step + 1 - self._plan_step
        return StepLoads(counts, tokens, wait_s, solve_s, lag)

    def _submit(self, step: int) -> None:
        if self._process is not None:
            self._process.submit(step, np.sum(self.history, axis=0))  # [L, N, E]
        self._submitted = step

    def _collect(self) -> tuple[list | None, float, float]:
        """Rank 0 waits for the submitted plans; every rank receives their layouts (communicates: broadcasts).
        Returns (layouts or None: not ready and not waiting, solve CPU seconds, seconds rank 0 waited for the
        planner; 0 on the other ranks)."""
        n, c = self.layers[0].placement.slots.shape
        e, dev = self.layers[0].num_experts, self.layers[0].router.weight.device
        header = torch.zeros(len(self.layers) * n * c + 1, dtype=torch.int64)
        solve_s, wait_s, plans, failure = 0.0, 0.0, None, None
        if self._process is not None:
            t0 = time.perf_counter()
            try:
                if not self.wait_for_plans and not self._process.ready():
                    raise _NotReady
                result = self._process.wait()
                if result.step != self._submitted:
                    raise RuntimeError(f"planner answered step {result.step}, expected {self._submitted}")
                solve_s = result.solve_s
                plans = [(p.slots, p.routing) for p in result.plans]
                header[:-1] = torch.from_numpy(np.stack([slots for slots, _ in plans]).ravel())
                header[-1] = int(any(f is not None for _, f in plans))  # 1: routing fractions follow
            except _NotReady:
                header[-1] = -2
            except Exception as err:  # tell every rank (they wait in the broadcast), then raise
                failure, header[-1] = err, -1
            wait_s = time.perf_counter() - t0
        header = header.to(dev)
        dist.broadcast(header, src=dist.get_global_rank(self.group, 0), group=self.group)
        header = header.cpu().numpy()
        if header[-1] == -2:
            return None, 0.0, wait_s
        if header[-1] < 0:
            raise RuntimeError("the planner on rank 0 failed") from failure
        slots = header[:-1].reshape(len(self.layers), n, c)
        fractions = [None] * len(self.layers)
        if header[-1]:
            # Plans of one step may mix explicit routing and the FSEP rule (layer by layer): NaN marks the rule.
            buf = torch.full((len(self.layers), n, e, n), float("nan"), dtype=torch.float64)
            for i, (_, f) in enumerate(plans or ()):
                if f is not None:
                    buf[i] = torch.from_numpy(f)
            buf = buf.to(dev)
            dist.broadcast(buf, src=dist.get_global_rank(self.group, 0), group=self.group)
            fractions = [None if np.isnan(f).all() else f for f in buf.cpu().numpy()]
        return list(zip(slots, fractions)), solve_s, wait_s

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
        """History, layouts in force and the pending submission: enough to resume with the same layouts and plans."""
        return {"history": [h.copy() for h in self.history], "submitted": self._submitted,
                "plan_step": self._plan_step,
                "layouts": [(m.placement.slots.copy(), getattr(m, "routing_fractions", None)) for m in self.layers]}

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved state. Same N: history, layouts and the pending plan exactly as saved. Another N: the
        saved history's source axis does not fit, so the history restarts empty and the layouts stay the default
        until the new run's first plan (a layout never changes the maths, so training stays exact)."""
        n = dist.get_world_size(self.group)
        history = state["history"]
        if history and history[0].shape[1] != n:
            return
        self.history.clear()
        self.history.extend(history)
        if self.planning:
            for m, (slots, fractions) in zip(self.layers, state["layouts"]):
                m.set_placement(Placement(slots, m.num_experts), fractions)
            self._plan_step = state["plan_step"]
            if state["submitted"] is not None and self.history:  # re-submit the pending window: same plan, same step
                self._submit(state["submitted"])

    def close(self) -> None:
        if self._process is not None:
            self._process.close()


