"""The sample order: a pure function of (seed, position), so resuming needs only the position."""

import numpy as np
import pytest

from scaletrain.data.loader import SampleOrder, TokenWindows


def test_each_epoch_is_a_permutation_and_epochs_differ():
    order = SampleOrder(50, seed=3)
    first, second = order.take(0, 50), order.take(50, 50)
    assert sorted(first) == list(range(50)) and sorted(second) == list(range(50))
    assert not np.array_equal(first, second)


def test_order_is_independent_of_how_it_is_read():
    """Reading in one go, in odd-sized chunks, or from a fresh object at any position agrees."""
    straight = SampleOrder(37, seed=11).take(0, 200)
    chunked, pos, reader = [], 0, SampleOrder(37, seed=11)
    for size in (5, 13, 1, 40, 64, 77):
        chunked.append(reader.take(pos, size))
        pos += size
    assert np.array_equal(straight, np.concatenate(chunked))
    assert np.array_equal(straight[123:150], SampleOrder(37, seed=11).take(123, 27))


def test_seed_changes_the_order_not_the_subset():
    a, b = SampleOrder(1000, seed=1, fraction=0.1), SampleOrder(1000, seed=2, fraction=0.1)
    assert len(a) == 100
    assert set(a.take(0, 100)) == set(b.take(0, 100)) == set(a.items)
    assert not np.array_equal(a.take(0, 100), b.take(0, 100))


class _Stream:
    def __init__(self, n):
        self.tokens = np.arange(n, dtype=np.int64)

    def __len__(self):
        return len(self.tokens)

    def get(self, start, length):
        return self.tokens[start : start + length]


def test_windows_shift_targets_by_one_and_do_not_overlap():
    windows = TokenWindows(_Stream(1000), seq_len=10)
    assert len(windows) == 99
    x, y = windows.batch(np.array([0, 5]))
    assert x.tolist()[0] == list(range(10)) and y.tolist()[0] == list(range(1, 11))
    assert x[1, 0].item() == 50
    assert windows.spread(1000).tolist() == list(range(99))
    assert windows.spread(3).tolist() == [0, 49, 98]


def test_too_short_a_stream_is_an_error():
    with pytest.raises(ValueError):
        TokenWindows(_Stream(10), seq_len=10)
