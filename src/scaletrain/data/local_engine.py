"""The local engine of `scaletrain prepare`: one machine, N worker processes, dedup in this process.

Per-task stages run in a pool of worker processes (forked from a fork server that holds their
modules; one tokenizer thread each, so N processes use N cores, never N x threads); the global dedup decisions read the hash partitions one at a time in
this process (`dedup.exact_duplicates`, `dedup.near_duplicates`). The Ray engine
(`ray_engine.py`) has the same methods and runs the same stages, so the output is the same.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from scaletrain.data import dedup, stages
from scaletrain.data.sources import Task


# Imported once, by the fork server, then inherited by every worker it forks: a worker costs a fork,
# not an interpreter start and half a second of imports (numpy, the tokenizer, the stages).
_PRELOAD = ["numpy", "tokenizers", "scaletrain.data.stages", "scaletrain.data.prepare_config"]


def _context():
    """Workers forked from a fork server: a fresh process (none of this process's threads, locks or
    GPU state, unlike a plain fork) that already holds the stages' modules (unlike spawn)."""
    try:
        ctx = get_context("forkserver")
    except ValueError:  # no fork server on this platform
        return get_context("spawn")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


class LocalEngine:
    name = "local"

    def __init__(self, workers: int, tasks: int) -> None:
        self.workers = workers
        # More processes than tasks would only add start-up time; one task runs in this process.
        procs = min(workers, tasks)
        self.pool = (ProcessPoolExecutor(procs, mp_context=_context(), initializer=stages.init_worker,
                                         initargs=(os.environ.get(stages.FAULT, ""),))
                     if procs > 1 else None)
        if self.pool is not None:
            # Start the workers now, while this process checks and opens the output, instead of on
            # the first task.
            for _ in range(procs):
                self.pool.submit(int)

    def run(self, fn: Callable[[Task], object], todo: list[Task], advance: Callable[[], None]) -> None:
        """fn(task) for every task (each writes its own files and marker); `advance` after each."""
        if self.pool is None:
            for t in todo:
                fn(t)
                advance()
            return
        futures = [self.pool.submit(fn, t) for t in todo]
        try:
            for fut in as_completed(futures):
                fut.result()
                advance()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise

    def exact_duplicates(self, files: list[Path], partitions: int) -> np.ndarray:
        return dedup.exact_duplicates(files, partitions)

    def near_duplicates(self, files: list[Path], partitions: int, exclude: np.ndarray, threshold: float,
                        signatures: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, dict[str, int]]:
        return dedup.near_duplicates(files, partitions, exclude, threshold, signatures)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
