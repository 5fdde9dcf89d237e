"""The Ray engine of `scaletrain prepare` (`--engine ray`): the same stages on Ray Data, over a cluster.

- Per-task stages (scan, tokenize) are Ray Data maps over the plan's tasks, one CPU each, calling
  the very functions the local engine calls (`stages.scan`, `stages.tokenize`). A task whose
  worker dies (a killed process, a lost node) is retried by Ray (Ray Data retries system
  failures; an exception raised by a stage stops the run at once); every stage writes its files
  atomically and its marker last, so a retry writes the same bytes.
- Dedup is global across the cluster: every task's rows (XXH3-128 for exact, (band, band hash)
  for near) are grouped by key with Ray's shuffle (a distributed sort: equal keys land in one
  block), each block is grouped and its candidate pairs verified against the MinHash signatures
  by the same functions as the local engine (`dedup.group_edges`, `dedup.verify_pairs`), and
  the driver joins the verified pairs into clusters (`dedup.cluster_removals`).
- Intermediate files live in `--out`/work, which every node must see (a shared filesystem).

With no address it starts a local Ray of `workers` CPUs (and stops it at the end); with
`ray_address` or $RAY_ADDRESS it joins that cluster and leaves it running.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from scaletrain.data import dedup, stages
from scaletrain.data.sources import Task
from scaletrain.extras import require

log = logging.getLogger(__name__)


class RayEngine:
    name = "ray"

    def __init__(self, workers: int | None, address: str | None = None) -> None:
        self.ray = require("ray", "ray", "prepare --engine ray")
        require("ray.data", "ray", "prepare --engine ray")
        address = address or os.environ.get("RAY_ADDRESS") or None
        self.started = False
        if not self.ray.is_initialized():
            common = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
            if address:
                self.ray.init(address=address, **common)
            else:
                self.ray.init(num_cpus=workers or os.cpu_count() or 1, **common)
            self.started = True
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        self.workers = min(workers, cpus) if workers else cpus
        # What every worker process sets before its first task: one tokenizer thread (a Ray worker
        # holds one CPU), and the test hook's fault, if one is planted.
        self.env = {**stages.WORKER_ENV, stages.FAULT: os.environ.get(stages.FAULT, "")}
        log.info("ray engine: %d CPUs%s", self.workers, f" at {address}" if address else " (local)")

    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        """Ray Data settings for our datasets, restored afterwards: a task-based sort shuffle (no
        long-lived shuffle actors to start), no block splitting (a block holds every row of its
        keys), no progress bars of its own (the pipeline has one)."""
        from ray.data import DataContext
        from ray.data.context import ShuffleStrategy

        ctx = DataContext.get_current()
        saved = (ctx.shuffle_strategy, ctx.target_max_block_size, ctx.enable_progress_bars)
        quiet = logging.getLogger("ray.data")
        level = quiet.level
        ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        ctx.target_max_block_size = None
        ctx.enable_progress_bars = False
        quiet.setLevel(max(level, logging.ERROR))  # its start-up notes, not ours to show
        try:
            yield
        finally:
            ctx.shuffle_strategy, ctx.target_max_block_size, ctx.enable_progress_bars = saved
            quiet.setLevel(level)

    def _tasks(self, items: list[dict]):
        import ray.data

        return ray.data.from_items(items, override_num_blocks=max(1, len(items)))

    def _map(self, ds, fn, **kwargs):
        from ray.data import TaskPoolStrategy

        return ds.map_batches(fn, batch_format="numpy", num_cpus=1, compute=TaskPoolStrategy(size=self.workers),
                              **kwargs)

    def run(self, fn: Callable[[Task], object], todo: list[Task], advance: Callable[[], None]) -> None:
        """fn(task) for every task, one Ray task each (retried if its worker dies)."""
        if not todo:
            return
        with self._context():
            ds = self._map(self._tasks([{"task": json.dumps(t.__dict__)} for t in todo]),
                           _Stage(fn, self.env), batch_size=1)
            for _ in ds.iter_batches(batch_size=1, batch_format="numpy"):
                advance()

    def _grouped(self, files: list[Path], kind: str, exclude, block_fn) -> list[dict]:
        """Every task's rows of `kind`, sorted by key across the cluster, `block_fn` on each block."""
        with self._context():
            rows = self._map(self._tasks([{"file": str(f)} for f in files]),
                             partial_rows(kind, exclude), batch_size=1).materialize()
            if rows.count() == 0:
                return []
            out = self._map(rows.sort(["key0", "key1"]), block_fn, batch_size=None)
            return list(out.iter_batches(batch_size=None, batch_format="numpy"))

    def exact_duplicates(self, files: list[Path], partitions: int) -> np.ndarray:
        blocks = self._grouped(files, "e", None, _exact_block)
        found = [b["id"] for b in blocks if len(b["id"])]
        return np.unique(np.concatenate(found)).astype(np.uint64) if found else np.empty(0, np.uint64)

    def near_duplicates(self, files: list[Path], partitions: int, exclude: np.ndarray, threshold: float,
                        signatures: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, dict[str, int]]:
        ref = self.ray.put(np.asarray(exclude, np.uint64))  # once in the object store, not in every task
        blocks = self._grouped(files, "n", ref, _NearBlock(threshold, signatures))
        checked = [np.column_stack([b["u"], b["v"], b["ok"]]) for b in blocks if len(b["u"])]
        return dedup.cluster_removals(np.concatenate(checked) if checked else np.empty((0, 3), np.uint64))

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


class _Stage:
    """One stage on one task, in a Ray worker: the worker's environment first (read by the
    tokenizer's thread pool at its first use), then the stage function."""

    def __init__(self, fn: Callable[[Task], object], env: dict[str, str]) -> None:
        self.fn, self.env = fn, env

    def __call__(self, batch: dict) -> dict:
        for key, value in self.env.items():
            if value:
                os.environ[key] = value
            else:
                os.environ.pop(key, None)
        done = []
        for item in batch["task"]:
            t = json.loads(str(item))
            task = Task(**{**t, "files": tuple(t["files"]), "rel": tuple(t["rel"])})
            self.fn(task)
            done.append(task.index)
        return {"task": np.array(done, np.int64)}


def partial_rows(kind: str, exclude):
    def rows(batch: dict) -> dict:
        """A task's rows of one kind as columns key0, key1, id (minus the excluded ids)."""
        import ray

        parts = [dedup.task_rows(Path(str(f)), kind) for f in batch["file"]]
        r = np.concatenate(parts) if parts else np.empty((0, 3), np.uint64)
        if exclude is not None:
            skip = ray.get(exclude)
            if len(skip):
                r = r[~np.isin(r[:, 2], skip)]
        return {"key0": r[:, 0], "key1": r[:, 1], "id": r[:, 2]}

    return rows


def _exact_block(batch: dict) -> dict:
    """Ids whose text equals that of a lower id, among the rows of one block (all of their keys)."""
    _, dup = dedup.group_edges((batch["key0"], batch["key1"]), batch["id"])
    return {"id": dup}


class _NearBlock:
    """Candidate pairs of one block's band groups, each verified against the signatures."""

    def __init__(self, threshold: float, signatures: Callable[[np.ndarray], np.ndarray]) -> None:
        self.threshold, self.signatures = threshold, signatures

    def __call__(self, batch: dict) -> dict:
        u, v = dedup.group_edges((batch["key0"], batch["key1"]), batch["id"])
        checked = dedup.verify_pairs(np.column_stack([u, v]), self.threshold, self.signatures)
        return {"u": checked[:, 0], "v": checked[:, 1], "ok": checked[:, 2]}
