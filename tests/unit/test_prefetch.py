"""Prefetcher: same values as calling produce directly, produced ahead in the background,
exceptions surfaced in get(), a clean close."""

import threading
import time

import pytest

from scaletrain.data.prefetch import Prefetcher


def test_get_returns_produce_of_the_key_in_order():
    with Prefetcher(lambda i: (i, i * i), depth=3) as p:
        assert [p.get(i) for i in range(10)] == [(i, i * i) for i in range(10)]
        assert p.get(15) == (15, 225)  # a jump forward drops what was prefetched for 10..12


def test_next_keys_are_produced_in_the_background_and_no_further():
    calls, ahead_done = [], threading.Event()

    def produce(i):
        calls.append(i)
        if i == 2:
            ahead_done.set()
        return i

    p = Prefetcher(produce, depth=2)
    assert p.get(0) == 0
    # Keys 1 and 2 are built without anyone asking for them yet ...
    assert ahead_done.wait(timeout=10)
    time.sleep(0.05)
    assert calls == [0, 1, 2]  # ... and nothing beyond depth (memory held ahead is bounded)
    assert p.get(1) == 1 and p.get(2) == 2
    p.close()  # 3 and 4 were queued; close cancels whichever has not started
    assert calls == list(range(len(calls))) and 3 <= len(calls) <= 5


def test_produce_runs_on_another_thread_while_the_caller_works():
    started, release, seen = threading.Event(), threading.Event(), []

    def produce(i):
        if i == 1:
            seen.append(threading.current_thread().name)
            started.set()
            release.wait(timeout=10)
        return i

    with Prefetcher(produce, depth=1) as p:
        assert p.get(0) == 0
        assert started.wait(timeout=10)  # produce(1) is running while this thread is free
        assert seen[0].startswith("scaletrain-prefetch") and seen[0] != threading.current_thread().name
        release.set()
        assert p.get(1) == 1


def test_an_exception_from_produce_is_raised_by_get_of_that_key():
    def produce(i):
        if i == 2:
            raise ValueError(f"bad batch {i}")
        return i

    with Prefetcher(produce, depth=2) as p:
        assert p.get(0) == 0 and p.get(1) == 1  # the failure of key 2, made ahead, waits for get(2)
        with pytest.raises(ValueError, match="bad batch 2"):
            p.get(2)
        assert p.get(3) == 3


def test_close_joins_the_thread():
    started, finished = threading.Event(), threading.Event()

    def produce(i):
        if i == 1:
            started.set()
            time.sleep(0.2)
            finished.set()
        return i

    p = Prefetcher(produce, depth=1)
    assert p.get(0) == 0
    assert started.wait(timeout=10)
    p.close()  # waits for the produce(1) that is running
    assert finished.is_set()
    assert not any(t.name.startswith("scaletrain-prefetch") for t in threading.enumerate())
    with pytest.raises(RuntimeError):
        p.get(1)
    p.close()  # idempotent


def test_cheap_batches_are_built_in_the_caller():
    """Below `inline_below` a thread hand-off costs more than it hides: no thread is started."""
    threads = []
    with Prefetcher(lambda i: threads.append(threading.current_thread().name) or i, depth=2,
                    inline_below=0.05) as p:
        assert [p.get(i) for i in range(20)] == list(range(20))
        assert p.inline and p._pool is None
    assert set(threads) == {threading.current_thread().name}


def test_slow_batches_switch_to_the_background_after_a_window():
    def produce(i):
        time.sleep(0.003)
        return threading.current_thread().name

    timed = Prefetcher.WINDOW * Prefetcher.WINDOWS
    with Prefetcher(produce, depth=1, inline_below=0.001) as p:
        first = [p.get(i) for i in range(timed)]
        assert set(first) == {threading.current_thread().name}  # timed in the caller first ...
        assert not p.inline
        later = [p.get(i) for i in range(timed, timed + 4)]
        assert all(name.startswith("scaletrain-prefetch") for name in later)  # ... then ahead


def test_a_burst_of_load_does_not_decide():
    """Most builds of every window stretched (another process had the core), one fast each time."""
    def produce(i):
        if i % Prefetcher.WINDOW:
            time.sleep(0.02)
        return i

    with Prefetcher(produce, depth=1, inline_below=0.01) as p:
        assert [p.get(i) for i in range(3 * Prefetcher.WINDOW)] == list(range(3 * Prefetcher.WINDOW))
        assert p.inline and p._pool is None


def test_one_slow_build_does_not_decide():
    """A cold first read (an epoch's order table, a page fault) is one build of the window."""
    def produce(i):
        if i == 0:
            time.sleep(0.05)
        return i

    with Prefetcher(produce, depth=1, inline_below=0.01) as p:
        assert [p.get(i) for i in range(3 * Prefetcher.WINDOW)] == list(range(3 * Prefetcher.WINDOW))
        assert p.inline
