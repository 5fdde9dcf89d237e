"""Background prefetch: the next steps' batches are built while the current step trains.

Building a batch is memory-mapped reads and numpy (both release the GIL for the copy), so one
background thread hides it behind the step's forward/backward (which releases the GIL in torch's
kernels). One worker thread keeps results in key order; `depth` bounds the memory held ahead.

    prefetch = Prefetcher(lambda step: make_batches(step), depth=2)
    for step in range(start, end):
        batches = prefetch.get(step)   # produce(step), built in the background
    prefetch.close()

`produce` must be a pure function of its key (as the loader is of the position): then prefetching
changes when a batch is built, never which batch.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class Prefetcher(Generic[T]):
    """`get(i)` returns `produce(i)`; keys i+1 .. i+depth are already being produced meanwhile."""

    def __init__(self, produce: Callable[[int], T], depth: int = 2):
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self.produce, self.depth = produce, depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scaletrain-prefetch")
        self._pending: dict[int, Future] = {}
        self._closed = False

    def _submit(self, key: int) -> None:
        if key not in self._pending:
            self._pending[key] = self._pool.submit(self.produce, key)

    def get(self, key: int) -> T:
        """produce(key); an exception raised by produce(key) is raised here, in the caller."""
        if self._closed:
            raise RuntimeError("Prefetcher is closed")
        # Keys go up; anything below `key` (a skipped or restarted range) is no longer wanted.
        for stale in [k for k in self._pending if k < key]:
            self._pending.pop(stale).cancel()
        self._submit(key)
        for ahead in range(key + 1, key + 1 + self.depth):
            self._submit(ahead)  # one worker runs them in submission order: key first
        return self._pending.pop(key).result()

    def close(self) -> None:
        """Cancel what has not started, wait for what has, and stop the thread."""
        if self._closed:
            return
        self._closed = True
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "Prefetcher[T]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
