"""The local engine of `scaletrain prepare`: one machine, N worker processes, dedup in this process.

Per-task stages run in a pool of spawned processes (one tokenizer thread each, so N processes use
N cores, never N x threads); the global dedup decisions read the hash partitions one at a time in
this process (`dedup.exact_duplicates`, `dedup.near_duplicates`). The Ray engine
(`ray_engine.py`) has the same methods and runs the same stages, so the output is the same.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from scaletrain.data import dedup, stages
from scaletrain.data.sources import Task


class LocalEngine:
    name = "local"

    def __init__(self, workers: int, tasks: int) -> None:
        self.workers = workers
        # More processes than tasks would only add start-up time; one task runs in this process.
        procs = min(workers, tasks)
        self.pool = (ProcessPoolExecutor(procs, mp_context=get_context("spawn"), initializer=stages.init_worker)
                     if procs > 1 else None)
        if self.pool is not None:
            # Spawning a worker costs about a second of imports: start them now, while this process
            # plans, checks and opens the output, instead of on the first task.
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
