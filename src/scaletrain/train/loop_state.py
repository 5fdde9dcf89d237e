"""What the loop carries between steps: the state a resume needs, and the log window's meter."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch


@dataclass
class LoopState:
    """Everything besides tensors that a resume needs to continue exactly."""

    step: int = 0
    position: int = 0  # global index of the next training sample
    best_val: float = math.inf
    best_step: int = -1
    bad_evals: int = 0  # evaluations since the last improvement (early stopping)
    units_seen: int = 0
    train_seconds: float = 0.0
    evals: list = field(default_factory=list)
    skipped_steps: int = 0  # steps whose update the guard dropped (NaN/Inf, spike)
    rollbacks: int = 0
    lr_scale: float = 1.0  # lowered by each rollback (guard.lr_factor)
    fitted_steps: int = 0  # schedule.budget=time: the step count fitted to the budget (0: not yet)
    budget_fits: int = 0  # how many fits were made (train/budget.py: two at most)


class Rollback(Exception):
    """Raised inside the step loop after a rollback: the loop restarts from the restored state."""


class Meter:
    """Loss and throughput since the last log line; loop edges (eval, checkpoint) are not timed."""

    def __init__(self):
        self.losses: list[torch.Tensor] = []  # summed once per window: no tensor op per step
        self.units = 0
        self.excluded = 0.0
        self.data_seconds = 0.0  # time spent waiting for batches
        self.busy_seconds = 0.0  # distributed: this rank's own time (before the first collective)
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, units: int) -> None:
        self.losses.append(loss)
        self.units += units

    @contextmanager
    def paused(self):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - began

    def read(self, reduce=None) -> tuple[float, float, int]:
        """(mean loss, seconds of training, units) of the window, then start a new window.
        `reduce` averages the loss over data-parallel ranks (None: one process)."""
        now = time.perf_counter()
        losses = self.losses
        if not losses:
            mean = math.nan
        elif reduce is None and losses[0].device.type == "cpu":
            # Nothing to wait for on the CPU: reading each is cheaper than a stack and a mean
            # (~4 vs ~10 us for 20 losses, timed alone); summed in double precision.
            mean = math.fsum(loss.item() for loss in losses) / len(losses)
        else:  # one read of the device per window
            mean_loss = torch.stack(losses).mean()
            mean = float(reduce(mean_loss) if reduce is not None else mean_loss)
        result = (mean, now - self.start - self.excluded, self.units)
        self.losses.clear()
        self.units = 0
        self.data_seconds = self.busy_seconds = 0.0
        self.excluded, self.start = 0.0, now
        return result


class ForwardClock:
    """A train step's `phase` that measures a rank's busy time: what it spends before its first
    forward pass (batches, host work) plus its forward passes. That tells a straggler from its
    peers: the backward waits in collectives, so every rank's backward lasts as long as the
    slowest one's. `start(began)` right before the step (began: when the step's work began)."""

    def __init__(self):
        self.seconds = 0.0
        self._began = 0.0
        self._pending: float | None = None  # since when, until the step's first forward

    def start(self, began: float) -> None:
        now = time.perf_counter()
        self.seconds, self._pending = now - began, now

    def __call__(self, name: str):
        return self if name == "forward" else _NOTHING

    def __enter__(self):
        self._began = time.perf_counter()
        if self._pending is not None:
            self.seconds += self._began - self._pending
            self._pending = None

    def __exit__(self, *exc):
        self.seconds += time.perf_counter() - self._began


_NOTHING = nullcontext()
