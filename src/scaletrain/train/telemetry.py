"""Training telemetry: metrics.jsonl, the trackers (log.trackers), a progress bar and log lines.

The trainer calls this at loop edges only, so the per-call cost must stay tiny: a train record is
kept and written out with the others at most FLUSH_EVERY_S later (to metrics.jsonl, one write and
flush, no fsync, and to the trackers), at once with an evaluation, before a checkpoint (`flush()`)
and at the end; a progress bar is refreshed at most 4 times a second by rich's thread rather than
on every update. A process killed outright loses at most the last second of records, which a
resume from its checkpoint writes again.
Only rank 0 should pass enabled=True; other ranks get cheap no-ops and touch nothing on disk.

Progress: a live bar where stderr is a terminal; elsewhere (nohup, SLURM, CI, a pipe) and with
`progress=False`, one plain line per logged step. Every line goes through the `scaletrain.train`
logger (INFO; warnings at WARNING): the CLI prints them to stderr (above the bar while it is
shown), a Python user configures `logging` as usual. A logger set above INFO (`scaletrain -q`)
shows neither bar nor step lines.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from scaletrain.atomic import write_text_atomic
from scaletrain.train.trackers import scalar as _scalar

__all__ = ["Telemetry", "humanize"]

log = logging.getLogger("scaletrain.train")

FLUSH_EVERY_S = 1.0  # the longest a train record waits to be written out

_UNITS = {"tokens": ("tokens_per_second", "tok/s"), "samples": ("samples_per_second", "samples/s")}


def humanize(x: float) -> str:
    """12345 -> '12.3k'; keeps progress columns narrow."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{suffix}"
    return f"{x:.0f}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v) or abs(v) >= 1000:
            return f"{v:,.0f}" if math.isfinite(v) else str(v)
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _json_default(v: Any) -> Any:
    # Tensors/numpy scalars sneak into metric dicts; store their value instead of failing a run.
    s = _scalar(v)
    return s if s is not None else str(v)


def _truncate_jsonl(path: Path, start_step: int) -> None:
    """Keep records with step <= start_step (and records without a step) so a resumed run's file
    equals an uninterrupted one's. Unparseable lines (a write cut by the crash) are dropped."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = rec.get("step") if isinstance(rec, dict) else None
        if not isinstance(step, (int, float)) or step <= start_step:
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))


class Telemetry:
    """One sink for everything the trainer reports. Usable as a context manager."""

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        total_steps: int,
        start_step: int = 0,
        unit: str = "tokens",
        trackers=None,
        progress: bool = True,
        console: Console | None = None,
    ) -> None:
        if unit not in _UNITS:
            raise ValueError(f"unit must be one of {sorted(_UNITS)}, got {unit!r}")
        self.enabled = enabled
        self.total_steps = total_steps
        self._throughput_key, self._unit_label = _UNITS[unit]
        self._closed = False
        self._file = None
        self.trackers = trackers  # scaletrain.train.trackers.Trackers, or None
        self._progress: Progress | None = None
        self._task = None
        # Records not yet written out: (record for metrics.jsonl, step, split, metrics for the trackers).
        self._pending: list[tuple[dict, int, str, dict]] = []
        self._flushed = time.monotonic()
        if not enabled:
            return

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "metrics.jsonl"
        if start_step > 0 and path.exists():
            _truncate_jsonl(path, start_step)
        # Line buffering is not used: we flush explicitly once per record, which is enough for
        # `tail -f` and crash recovery (the OS has the bytes) without an fsync per line.
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

        # The bar is drawn on stderr, beside the log lines, and only where it can be drawn: in a
        # file or a pipe rich would show nothing until the end, so plain step lines go there.
        console = console or Console(stderr=True)
        if progress and console.is_terminal and log.isEnabledFor(logging.INFO):
            self._progress = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[throughput]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
                refresh_per_second=4,
            )
            self._task = self._progress.add_task(
                "train", total=total_steps, completed=start_step, loss="-", throughput="-"
            )
            self._progress.start()

    @property
    def bar(self) -> bool:
        """Whether a live progress bar is shown (else step lines are logged)."""
        return self._progress is not None

    def set_total(self, total_steps: int) -> None:
        """The run's step count changed (schedule.budget=time fitted it): the progress bar follows."""
        self.total_steps = total_steps
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=total_steps)

    # ------------------------------------------------------------------ logging

    def flush(self) -> None:
        """Write out the records kept so far (metrics.jsonl, the trackers)."""
        if not self._pending or self._file is None:
            return
        pending, self._pending = self._pending, []
        self._file.write("".join(json.dumps(record, default=_json_default) + "\n" for record, *_ in pending))
        self._file.flush()
        if self.trackers is not None:
            for _, step, split, metrics in pending:
                self.trackers.log(step, split, metrics)
        self._flushed = time.monotonic()

    def log_train(self, step: int, metrics: dict) -> None:
        if not self.enabled or self._closed:
            return
        # Kept, not written: on a short step (1 ms, the MLP preset) a write, a flush and a tracker
        # event per record showed in benchmarks/overhead.py's rows without logs.
        self._pending.append(({"step": step, "split": "train", **metrics}, step, "train", metrics))
        if time.monotonic() - self._flushed >= FLUSH_EVERY_S:
            self.flush()
        loss = _scalar(metrics.get("loss"))
        rate = _scalar(metrics.get(self._throughput_key))
        loss_s = f"{loss:.4f}" if loss is not None else "-"
        rate_s = f"{humanize(rate)} {self._unit_label}" if rate is not None else "-"
        if self._progress is not None:
            self._progress.update(self._task, completed=step, loss=loss_s, throughput=rate_s)
        else:
            # Without a bar (CI logs, nohup, pipes) a line per logged step is the sign of life.
            log.info("step %d/%d | loss %s | %s", step, self.total_steps, loss_s, rate_s)

    def log_eval(self, step: int, metrics: dict) -> None:
        if not self.enabled or self._closed:
            return
        # Tasks name eval metrics "val_loss", "val_ppl"...: drop the prefix for the trackers' tags
        # ("val/loss" lines up with "train/loss") and for the log line.
        short = {k.removeprefix("val_"): v for k, v in metrics.items()}
        self._pending.append(({"step": step, "split": "val", **metrics}, step, "val", short))
        self.flush()
        parts = [f"step {step}"]
        for k, v in short.items():
            parts.append(f"{'val loss' if k == 'loss' else k} {_fmt(v)}")
        log.info("%s", " | ".join(parts))

    def message(self, text: str) -> None:
        """A line for the log: `warning: ...` and `error: ...` at their level, others at INFO."""
        if not self.enabled or self._closed:
            return
        level = logging.WARNING if text.startswith("warning:") else \
            logging.ERROR if text.startswith("error:") else logging.INFO
        log.log(level, "%s", text)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop the bar and close metrics.jsonl (the trackers are finished by their owner, with the
        run's summary)."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._progress is not None:
            self._progress.stop()
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
