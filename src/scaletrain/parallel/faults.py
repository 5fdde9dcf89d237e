"""Fault injection for the reliability and diagnosis tests: make a rank die, stall or lag, the data
slow, or the loss NaN, at a given step.

`SCALETRAIN_FAULT` holds one or more faults separated by commas, each `kind:key=value:...`:

- `kill:rank=1:step=5` — SIGKILL rank 1 before step 5 (a crash: no cleanup);
- `stall:rank=1:step=3:seconds=60` — rank 1 sleeps before step 3 (a hang);
- `slow_rank:rank=1:seconds=0.05` — rank 1 sleeps before every step (a straggler);
- `slow_data:seconds=0.05` — building every batch takes this much longer (a data-bound run);
- `nan:step=4` — the loss of step 4 is NaN (a numerical fault);
- `spike:step=4:factor=20` — the loss of step 4 is 20 times larger (a loss spike).

A test hook, not a setting: kill, stall and nan act only on the first attempt of a torchrun group (a
restarted group runs clean), so a test can check that training survives the fault. The trainer
installs the hooks once, when a fault is set (`enabled()`), by wrapping its step, its loss and its
batch builder (`Injector`): without a fault the loop runs none of this.
"""

from __future__ import annotations

import functools
import os
import signal
import time

from scaletrain.parallel.dist import restart_count


_VAR = "SCALETRAIN_FAULT"


def enabled() -> bool:
    """Whether any fault is set (read once by the trainer, which then installs the hooks)."""
    return bool(os.environ.get(_VAR, "").strip())


class Injector:
    """The hooks of one run, installed once by the trainer when a fault is set: around its step
    (kill, stall, straggler; and the loss factor of the step about to run), its loss (NaN, spike)
    and its batch builder (slow data). `next_step()` is the number of the step about to run."""

    def __init__(self, rank: int, next_step):
        self.rank, self.next_step = rank, next_step
        _fired.clear()  # faults fire once per run: a second run in this process starts clean
        self.factor: float | None = None  # the running step's loss factor, the same for every micro-batch

    def step(self, step_fn):
        def step(*args, **kwargs):
            step_number = self.next_step()
            maybe_inject(step_number, self.rank)
            self.factor = loss_factor(step_number)
            return step_fn(*args, **kwargs)

        return step

    def loss(self, loss_fn):
        def loss(logits, y):
            value = loss_fn(logits, y)
            return value if self.factor is None else value * self.factor

        return loss

    @staticmethod
    def batches(produce):
        def slow(*args, **kwargs):
            delay = data_delay()
            if delay:
                time.sleep(delay)
            return produce(*args, **kwargs)

        return slow


def _faults() -> tuple[tuple[str, dict[str, float]], ...]:
    # Read on every call (tests set it per run), parsed once per value: this is on the step's path.
    return _parse(os.environ.get(_VAR, ""))


@functools.lru_cache(maxsize=8)
def _parse(spec: str) -> tuple[tuple[str, dict[str, float]], ...]:
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, *fields = item.split(":")
        out.append((kind, {k: float(v) for k, v in (f.split("=", 1) for f in fields)}))
    return tuple(out)


def _find(kind: str) -> dict[str, float] | None:
    for k, args in _faults():
        if k == kind:
            return args
    return None


def maybe_inject(step: int, rank: int) -> None:
    """Called before optimizer step `step` (1-based) on every rank."""
    if _VAR not in os.environ:  # the hot path: no fault set, one dict lookup per step
        return
    lag = _find("slow_rank")
    if lag is not None and int(lag.get("rank", 0)) == rank:
        time.sleep(lag.get("seconds", 0.05))
    if restart_count() > 0:
        return
    for kind in ("kill", "stall"):
        args = _find(kind)
        if args is None or int(args.get("rank", 0)) != rank or int(args.get("step", 0)) != step:
            continue
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(args.get("seconds", 3600))


def data_delay() -> float:
    if _VAR not in os.environ:
        return 0.0
    args = _find("slow_data")
    return args.get("seconds", 0.05) if args is not None else 0.0


_fired: set[str] = set()


def loss_factor(step: int) -> float | None:
    """What the loss of `step` is multiplied by (NaN, or a spike's factor), or None. Each fault fires
    once per run (an Injector starts it clean): a rollback that reaches the same step again runs clean, as after a
    transient fault."""
    if _VAR not in os.environ:
        return None
    if restart_count() > 0:
        return None
    for kind, factor in (("nan", float("nan")), ("spike", None)):
        args = _find(kind)
        if args is None or int(args.get("step", 0)) != step or kind in _fired:
            continue
        _fired.add(kind)
        return factor if factor is not None else args.get("factor", 20.0)
    return None
