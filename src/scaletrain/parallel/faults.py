"""Fault injection for the reliability tests: make one rank die or stall at a given step.

`SCALETRAIN_FAULT="kill:rank=1:step=5"` or `"stall:rank=1:step=3:seconds=60"`. A test hook, not a
setting: it acts only on the first attempt of a torchrun group (a restarted group runs clean), so
a test can check that training survives the fault.
"""

from __future__ import annotations

import os
import signal
import time

from scaletrain.parallel.dist import restart_count


def _parse(spec: str) -> tuple[str, dict[str, float]]:
    kind, *fields = spec.split(":")
    return kind, {k: float(v) for k, v in (f.split("=", 1) for f in fields)}


def maybe_inject(step: int, rank: int) -> None:
    """Called before optimizer step `step` (1-based) on every rank."""
    spec = os.environ.get("SCALETRAIN_FAULT")
    if not spec or restart_count() > 0:
        return
    kind, args = _parse(spec)
    if int(args.get("rank", 0)) != rank or int(args.get("step", 0)) != step:
        return
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)  # a crash: no cleanup, no exception handler
    elif kind == "stall":
        time.sleep(args.get("seconds", 3600))
