"""World-size invariance and exact resume, on real shards, through the task the trainer calls.

The trainer slices each global batch: rank r's k-th micro-batch of the step at position p is the
samples at p + k*(b*W) + r*b ... + b. These tests replay that slicing for several world sizes and
audit which samples (window ids) each rank gets.
"""

import numpy as np
import pytest
import torch

from loader_data import random_docs, write_prepared
from scaletrain.data.loader import data_fingerprint
from scaletrain.data.shards import TokenShards
from scaletrain.errors import UserError
from scaletrain.train.tasks import LanguageModeling

SEQ = 16


def _task(data_dir, seed=5, fraction=1.0, seq_len=SEQ):
    train = TokenShards(data_dir, "train")
    return LanguageModeling.from_shards(
        train, TokenShards(data_dir, "val"), seq_len=seq_len, seed=seed, fraction=fraction,
        token_bytes=np.ones(300), train_counts=train.bincount(), fingerprint=data_fingerprint(data_dir))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_prepared(tmp_path_factory.mktemp("resume"), random_docs(1, 120), random_docs(2, 10))


def _run(task, world, steps, *, batch=3, accum=2, position=0):
    """What each rank draws, step by step, as the trainer slices global batches.
    Returns ({rank: [window ids]}, {position: window id}, next position)."""
    per_rank, by_position = {r: [] for r in range(world)}, {}
    for _ in range(steps):
        for k in range(accum):
            for r in range(world):
                start = position + k * batch * world + r * batch
                ids = task.sample_ids(start, batch)
                x, y = task.train_batch(start, batch)
                # The tokens are those of the audited windows: the ids are not a separate story.
                expect = torch.from_numpy(np.stack([task.train.shards.get(int(w) * SEQ, SEQ + 1) for w in ids]))
                assert torch.equal(x, expect[:, :-1]) and torch.equal(y, expect[:, 1:])
                per_rank[r].extend(ids.tolist())
                by_position.update(zip(range(start, start + batch), ids.tolist()))
        position += batch * accum * world
    return per_rank, by_position, position


def test_world_sizes_1_2_4_see_one_global_order(data_dir):
    task = _task(data_dir)
    n = task.num_train_samples
    assert n > 100
    reference = task.sample_ids(0, 3 * n)  # three epochs
    orders = {}
    for world in (1, 2, 4):
        steps = -(-3 * n // (3 * 2 * world))  # enough steps to cover three epochs
        per_rank, by_position, end = _run(_task(data_dir), world, steps)
        # Equal work by construction: every rank drew the same number of samples, also at epoch ends.
        assert len({len(v) for v in per_rank.values()}) == 1
        assert sorted(by_position) == list(range(end))
        orders[world] = np.array([by_position[p] for p in range(3 * n)])
    assert np.array_equal(orders[1], reference)
    assert np.array_equal(orders[2], reference) and np.array_equal(orders[4], reference)
    for e in range(3):  # each epoch is a permutation of all windows, and epochs differ
        assert sorted(reference[e * n:(e + 1) * n]) == list(range(n))
    assert not np.array_equal(reference[:n], reference[n:2 * n])


def test_interrupted_epoch_resumed_on_another_world_size_delivers_each_sample_once(data_dir):
    n = _task(data_dir).num_train_samples
    # First run: 2 ranks, interrupted mid-epoch; its checkpoint holds the position and data state.
    first = _task(data_dir)
    _, before, position = _run(first, 2, steps=7)
    state = first.data_state(position)
    assert 0 < state["consumed"] < n and state["epoch"] == 0 and state["position"] == position
    # The resumed run is a new process (a fresh task) on 4 ranks: it checks the state and jumps there.
    resumed = _task(data_dir)
    assert resumed.check_data_state(state) == position
    _, after, end = _run(resumed, 4, steps=-(-(n - position) // 24), position=position)
    assert not set(before) & set(after)  # no position drawn twice ...
    drawn = {**before, **after}
    assert sorted(drawn) == list(range(end)) and end >= n  # ... and none skipped
    # Audit: every window of the epoch exactly once, in the uninterrupted run's order.
    epoch = [drawn[p] for p in range(n)]
    assert sorted(epoch) == list(range(n))
    assert epoch == _task(data_dir).sample_ids(0, n).tolist()


def test_data_state_refuses_other_data_or_seed(data_dir, tmp_path):
    task = _task(data_dir)
    state = task.data_state(1000)
    assert state["epoch"] == 1000 // task.num_train_samples
    assert state["consumed"] == 1000 % task.num_train_samples
    with pytest.raises(UserError, match="train.seed"):
        _task(data_dir, seed=6).check_data_state(state)
    with pytest.raises(UserError, match="data.train_fraction or data.seq_len"):
        _task(data_dir, fraction=0.5).check_data_state(state)
    with pytest.raises(UserError, match="data.seq_len"):
        _task(data_dir, seq_len=SEQ + 1).check_data_state(state)
    other = write_prepared(tmp_path / "other", random_docs(3, 120), random_docs(2, 10))
    with pytest.raises(UserError, match="fingerprint"):
        _task(other).check_data_state(state)
    # The same data rebuilt in another folder has the same fingerprint: resuming there is fine.
    copy = write_prepared(tmp_path / "copy", random_docs(1, 120), random_docs(2, 10))
    assert _task(copy).check_data_state(state) == 1000


def test_the_order_depends_on_seed_and_fingerprint_the_subset_does_not(data_dir, tmp_path):
    a, b = _task(data_dir, fraction=0.3), _task(data_dir, seed=6, fraction=0.3)
    n = a.num_train_samples
    assert set(a.sample_ids(0, n).tolist()) == set(b.sample_ids(0, n).tolist())
    assert not np.array_equal(a.sample_ids(0, n), b.sample_ids(0, n))


def test_pread_reads_equal_the_memory_map_across_shards(data_dir):
    from scaletrain.data.loader import PreadTokens

    shards = TokenShards(data_dir, "train")
    reader = PreadTokens(shards)
    assert len(reader) == len(shards) and len(shards._shards) > 3  # several shard files
    everything = shards.get(0, len(shards))
    assert np.array_equal(reader.get(0, len(shards)), everything)
    for start in (0, 499, 500, 1234, len(shards) - 17):  # inside, at and across shard boundaries
        assert np.array_equal(reader.get(start, 17), everything[start:start + 17])
    with pytest.raises(IndexError):
        reader.get(len(shards) - 1, 2)
    reader.close()
