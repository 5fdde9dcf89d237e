"""Experiment trackers (`log.trackers`): TensorBoard, MLflow, Weights & Biases, trackio.

Each gets, through its own library, the run's resolved config at the start, the metrics of every
logged step and evaluation (`train/loss`, `val/loss`, ...), and the final summary at the end. Only
rank 0 opens them. Where each writes is the library's own setting: TensorBoard the run folder's
`tensorboard/`; MLflow `MLFLOW_TRACKING_URI` (default `./mlruns`); W&B its login, or `WANDB_MODE=offline`
(files under `WANDB_DIR`, default the run folder); trackio `TRACKIO_DIR`. The run is named after the
run folder and filed under `log.project` (an MLflow experiment, a W&B / trackio project).

A resumed run continues the same tracker runs: their ids are kept in the run folder's
`trackers.json`. A tracker is an observer: one that fails (a server that went away, a full disk) is
reported once as a warning and dropped, and training goes on.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from scaletrain.atomic import write_json_atomic
from scaletrain.errors import UserError
from scaletrain.extras import require

log = logging.getLogger(__name__)

IDS_FILE = "trackers.json"


def scalar(v: Any) -> float | None:
    """A float for a tracker, or None for values that are not one number (strings, lists)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    item = getattr(v, "item", None)  # one-element torch/numpy values; .item() raises otherwise
    if callable(item):
        try:
            return float(item())
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


def numbers(metrics: dict) -> dict[str, float]:
    return {k: f for k, v in metrics.items() if (f := scalar(v)) is not None}


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}: the form parameter tables take."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


EVENTS_EVERY_S = 2.0


class TensorBoard:
    """Event files in RUN/tensorboard: scalars, the config and the summary as text."""

    def __init__(self, run_dir: Path, *, config: dict, **_):
        # Imported here: tensorboard/protobuf take seconds, wasted on ranks that log nothing.
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import SummaryWriter

        # A deeper queue than the default 10 keeps add_summary from blocking on the writer thread.
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), max_queue=1000)
        self._Summary = Summary
        self._pending: list = []  # (summary, step) not yet handed to the writer thread
        self._since = time.monotonic()
        self.writer.add_text("config", "```json\n" + json.dumps(config, indent=1) + "\n```", 0)

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        # One event per call instead of one per key (add_scalar): each event is a protobuf and a
        # hand-off to the writer thread (~445 -> ~70-100 us per logged step with 5 scalars). The
        # events are handed over in bursts, at most every EVENTS_EVERY_S: each hand-off wakes the
        # writer thread, which then takes the GIL from the training loop (TensorBoard reloads
        # every few seconds anyway; metrics.jsonl is written at once).
        S = self._Summary
        values = [S.Value(tag=f"{split}/{k}", simple_value=v) for k, v in metrics.items()]
        if values:
            self._pending.append((S(value=values), step))
        if time.monotonic() - self._since >= EVENTS_EVERY_S:
            self._hand_over()

    def _hand_over(self) -> None:
        for summary, step in self._pending:
            self.writer.file_writer.add_summary(summary, global_step=step)
        self._pending.clear()
        self._since = time.monotonic()

    def finish(self, summary: dict | None, step: int) -> None:
        self._hand_over()
        if summary is not None:
            self.writer.add_text("summary", "```json\n" + json.dumps(summary, indent=1, default=str) + "\n```", step)
        self.writer.close()  # flushes pending events


class MLflow:
    """An MLflow run through MlflowClient (no global active run: a Python user's own stays theirs)."""

    def __init__(self, run_dir: Path, *, config: dict, name: str, project: str, resume_id: str | None):
        mlflow = require("mlflow", "trackers", "log.trackers=mlflow")
        from mlflow.entities import Param

        self._mlflow = mlflow
        self.client = mlflow.MlflowClient()
        experiment = self.client.get_experiment_by_name(project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(project)
        if resume_id is not None:
            self.run_id = resume_id
            self.client.update_run(resume_id, status="RUNNING")
            return
        run = self.client.create_run(experiment_id, run_name=name, tags={"scaletrain.run_dir": str(run_dir)})
        self.run_id = run.info.run_id
        params = [Param(k, json.dumps(v) if not isinstance(v, str) else v)
                  for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_dict(self.run_id, config, "config.json")
        log.info("log.trackers=mlflow: run %s of experiment %s at %s", self.run_id, project,
                 mlflow.get_tracking_uri())

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(f"{split}/{k}", v, now, step) for k, v in metrics.items()])

    def finish(self, summary: dict | None, step: int) -> None:
        if summary is not None:
            self.log(step, "summary", {k: v for k, v in numbers(summary).items() if math.isfinite(v)})
            self.client.log_dict(self.run_id, json.loads(json.dumps(summary, default=str)), "summary.json")
        self.client.set_terminated(self.run_id, status="FINISHED" if summary is not None else "FAILED")

    @property
    def ident(self) -> str:
        return self.run_id


class WandB:
    """A W&B run (online, or offline with WANDB_MODE=offline); files under WANDB_DIR or the run folder.
    wandb's own console lines and its capture of the console are off (unless the scaletrain logger
    is at DEBUG): one line says where the run is."""

    def __init__(self, run_dir: Path, *, config: dict, name: str, project: str, resume_id: str | None):
        import os

        wandb = require("wandb", "trackers", "log.trackers=wandb")
        where = None if os.environ.get("WANDB_DIR") else str(run_dir)
        quiet = not logging.getLogger("scaletrain").isEnabledFor(logging.DEBUG)
        self.run = wandb.init(project=project, name=name, config=config, dir=where, id=resume_id,
                              resume="allow" if resume_id else None, reinit="create_new",
                              settings=wandb.Settings(console="off", silent=quiet))
        where = f"offline run {self.run.id} in {self.run.dir}" if self.run.offline else self.run.url
        log.info("log.trackers=wandb: %s", where)

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        self.run.log({f"{split}/{k}": v for k, v in metrics.items()}, step=step)

    def finish(self, summary: dict | None, step: int) -> None:
        if summary is not None:
            self.run.summary.update(numbers(summary))
        self.run.finish(exit_code=0 if summary is not None else 1)

    @property
    def ident(self) -> str:
        return self.run.id


@contextlib.contextmanager
def _printed_to_debug(what: str):
    """A library that prints to stdout (the command's result stream): its lines go to the log, at DEBUG."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            yield
    finally:
        for line in out.getvalue().splitlines():
            if line.strip():
                log.debug("%s: %s", what, line)


class Trackio:
    """A trackio run, stored where TRACKIO_DIR says (a local SQLite database by default); no system
    metrics thread (it would take CPU time from the training)."""

    def __init__(self, run_dir: Path, *, config: dict, name: str, project: str, resume_id: str | None):
        self._trackio = require("trackio", "trackers", "log.trackers=trackio")
        self.name = resume_id or name
        import inspect

        offered = inspect.signature(self._trackio.init).parameters
        quiet = {k: False for k in ("auto_log_cpu", "auto_log_gpu") if k in offered}  # newer trackio only
        with _printed_to_debug("trackio"):
            self.run = self._trackio.init(project=project, name=self.name, config=config,
                                          resume="allow" if resume_id else "never", **quiet)
        log.info("log.trackers=trackio: project %s, run %s (trackio show --project %s)", project, self.name, project)

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        with _printed_to_debug("trackio"):
            self.run.log({f"{split}/{k}": v for k, v in metrics.items()}, step=step)

    def finish(self, summary: dict | None, step: int) -> None:
        with _printed_to_debug("trackio"):
            if summary is not None:  # trackio has no summary of its own: the final values at the last step
                self.log(step, "summary", numbers(summary))
            self._trackio.finish()  # (the module's: it also forgets the run, so atexit does not finish it again)

    @property
    def ident(self) -> str:
        return self.name


KINDS = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB, "trackio": Trackio}


class Trackers:
    """The run's trackers (rank 0 only). `log` after each logged step or evaluation, `finish` once
    with the summary (None: the run failed)."""

    def __init__(self, names: list[str], run_dir: Path, *, config: dict, project: str = "scaletrain",
                 resume: bool = False):
        self.run_dir = Path(run_dir)
        self.open: dict[str, Any] = {}
        self._step = 0
        self._finished = False
        ids = self._saved_ids() if resume else {}
        for name in names:
            try:
                self.open[name] = KINDS[name](self.run_dir, config=config, name=self.run_dir.name, project=project,
                                              resume_id=ids.get(name))
            except UserError:  # a missing extra (the config check refuses it sooner, for the CLI)
                raise
            except Exception as exc:  # noqa: BLE001 - a tracker never costs the run
                self._drop(name, "could not start", exc)
        idents = {n: t.ident for n, t in self.open.items() if hasattr(t, "ident")}
        if idents:
            write_json_atomic(self.run_dir / IDS_FILE, idents)

    def _saved_ids(self) -> dict[str, str]:
        from scaletrain.untrusted.files import read_json

        path = self.run_dir / IDS_FILE
        if not path.is_file():
            return {}
        try:
            ids = read_json(path, what="the run's tracker ids (trackers.json)", expect=dict)
        except UserError as exc:
            log.warning("warning: %s; the trackers start new runs", exc)
            return {}
        return {k: v for k, v in ids.items() if isinstance(v, str) and len(v) <= 256}

    def _drop(self, name: str, what: str, exc: BaseException) -> None:
        self.open.pop(name, None)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        log.warning("warning: log.trackers=%s %s (%s: %s); the run goes on without it", name, what,
                    type(exc).__name__, first)

    def log(self, step: int, split: str, metrics: dict) -> None:
        self._step = max(self._step, step)
        values = numbers(metrics)
        for name, tracker in list(self.open.items()):
            try:
                tracker.log(step, split, values)
            except Exception as exc:  # noqa: BLE001
                self._drop(name, "failed to log", exc)

    def finish(self, summary: dict | None) -> None:
        if self._finished:
            return
        self._finished = True
        for name, tracker in list(self.open.items()):
            try:
                tracker.finish(summary, self._step)
            except Exception as exc:  # noqa: BLE001
                self._drop(name, "failed to finish", exc)
        self.open.clear()
