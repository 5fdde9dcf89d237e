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

A thread is not free. Each hand-off (a future, a queue, a wake-up) costs a little; the GIL costs
more: the step releases it around every torch op, the worker grabs it, and the step waits to get
it back (measured on the 2-core dev box with the MLP preset: 4-7 voluntary context switches per
step and 2.0-2.6 ms steps with the thread, against 0.4 and 1.6 ms building its 0.1-0.25 ms batches
inline). With `inline_below` (seconds) batches are built in the caller until building gets slower
(a remote disk, heavy decoding, an injected slow_data fault): when even the fastest build of each
of two windows in a row took `inline_below` or more, the prefetcher switches to the background
thread for good. The fastest, not the median: on a shared machine a burst of load from elsewhere
stretches most builds of a window (it preempts this process), never all of them, and it must not
move a cheap loader onto a thread for the rest of the run (measured: MLP steps 2.5x slower after
such a switch). The values are the same either way.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class Prefetcher(Generic[T]):
    """`get(i)` returns `produce(i)`; keys i+1 .. i+depth are already being produced meanwhile."""

    WINDOW = 8  # builds timed per window; the fastest of each counts, so one cold read does not decide
    WINDOWS = 2  # slow windows in a row that move building to the thread

    def __init__(self, produce: Callable[[int], T], depth: int = 2, inline_below: float = 0.0):
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self.produce, self.depth, self.inline_below = produce, depth, inline_below
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future] = {}
        self._closed = False
        self._recent: deque[float] = deque(maxlen=self.WINDOW)
        self._built = 0  # the window is looked at once per WINDOW builds
        self._slow_windows = 0
        self.inline = inline_below > 0  # True while batches are built in the caller

    def _submit(self, key: int) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scaletrain-prefetch")
        if key not in self._pending:
            self._pending[key] = self._pool.submit(self.produce, key)

    def _produce_inline(self, key: int) -> T:
        began = time.perf_counter()
        out = self.produce(key)
        self._recent.append(time.perf_counter() - began)
        self._built += 1
        if self._built % self.WINDOW == 0:
            self._slow_windows = self._slow_windows + 1 if min(self._recent) >= self.inline_below else 0
            if self._slow_windows >= self.WINDOWS:
                self.inline = False  # from the next key on, build ahead in the background
        return out

    def get(self, key: int) -> T:
        """produce(key); an exception raised by produce(key) is raised here, in the caller."""
        if self._closed:
            raise RuntimeError("Prefetcher is closed")
        if self.inline:
            return self._produce_inline(key)
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
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> "Prefetcher[T]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
