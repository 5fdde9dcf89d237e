"""The sample order: a pure function of (seed, position), so resuming needs only the position."""

import numpy as np
import pytest
import torch

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


# ---- the permutation behind the order ------------------------------------------------------


def test_permutation_is_a_bijection_for_awkward_sizes():
    from scaletrain.data.permutation import Permutation

    for n in (1, 2, 3, 5, 64, 65, 1000, 4099):
        assert sorted(Permutation(n, [7])(np.arange(n)).tolist()) == list(range(n))
    with pytest.raises(IndexError):
        Permutation(10, [7])(np.array([10]))


def test_small_calls_and_vectorized_calls_agree():
    """Micro-batches take a plain-Python path, large calls a numpy one: the same permutation."""
    from scaletrain.data.permutation import Permutation

    for n in (3, 1000, 10**9 + 7):
        perm = Permutation(n, [4, 2])
        index = np.arange(min(n, 3000))
        pieces = np.concatenate([perm(index[i:i + 4]) for i in range(0, len(index), 4)])
        assert np.array_equal(perm(index), pieces)


def test_the_lookup_table_holds_the_computed_permutation(monkeypatch):
    """Small orders are looked up in a table built once; large ones computed per call: same values
    (the order must not change when a corpus crosses the table's size limit)."""
    from scaletrain.data import permutation

    for n in (1, 5, 1000, 4099):
        index = np.random.default_rng(n).integers(0, n, size=200)
        tabled = permutation.Permutation(n, [3, 1])
        assert tabled(index[:2]).dtype == np.int64 and tabled._table is not None
        monkeypatch.setattr(permutation, "TABLE_LIMIT", 0)
        computed = permutation.Permutation(n, [3, 1])
        assert np.array_equal(computed(index), tabled(index)) and computed._table is None
        assert np.array_equal(computed(index[:4]), tabled(index[:4]))  # the plain-Python path too
        monkeypatch.undo()


def test_permutation_looks_shuffled():
    """A reference for "shuffled": where sample i lands is uncorrelated with i, and the first tenth
    of an epoch draws from the whole range (not from one region of the corpus)."""
    from scaletrain.data.permutation import Permutation

    n = 10000
    out = Permutation(n, [1, 2, 3])(np.arange(n))
    assert abs(np.corrcoef(np.arange(n), out)[0, 1]) < 0.05
    counts = np.bincount(out[: n // 10] * 10 // n, minlength=10)  # 1000 draws into 10 bins
    assert counts.min() > 60 and counts.max() < 140
    assert not np.array_equal(out, Permutation(n, [1, 2, 4])(np.arange(n)))


def test_state_is_o1_no_epoch_arrays():
    """The order of a billion samples is looked up without materializing anything of that size."""
    order = SampleOrder(10**9, seed=1, fraction=0.5, fingerprint="abc")
    ids = order.take(3 * 10**9 // 2 - 2, 4)  # across the epoch 2 -> 3 boundary
    assert len(order) == 5 * 10**8 and ids.shape == (4,) and len(set(ids.tolist())) == 4
    assert np.array_equal(ids, SampleOrder(10**9, seed=1, fraction=0.5, fingerprint="abc").take(3 * 10**9 // 2 - 2, 4))
    assert not np.array_equal(ids, SampleOrder(10**9, seed=1, fraction=0.5, fingerprint="abd").take(3 * 10**9 // 2 - 2, 4))


# ---- packing with document boundaries ------------------------------------------------------


class _Docs(_Stream):
    """A stream of documents with known starts, as TokenShards exposes them (`doc_starts`)."""

    def __init__(self, lengths):
        super().__init__(int(sum(lengths)))
        self.doc_starts = np.cumsum([0, *lengths[:-1]]).astype(np.int64)


def test_document_ids_follow_the_idx_offsets():
    windows = TokenWindows(_Docs([5, 12, 3, 30]), seq_len=8)
    x, y = windows.batch(np.array([0, 1, 2]), doc_ids=True)
    assert torch.equal(x["idx"][0], torch.arange(8)) and torch.equal(y[0], torch.arange(1, 9))
    # window 0: tokens 0..7 = doc 0 (0-4), doc 1 (5-7); window 1: 8..15 all doc 1;
    # window 2: 16..23 = doc 1 (16), doc 2 (17-19), doc 3 (20-23). Numbered from 0 per row.
    assert x["doc_ids"].tolist() == [[0] * 5 + [1] * 3, [0] * 8, [0, 1, 1, 1, 2, 2, 2, 2]]
    plain, _ = windows.batch(np.array([0, 1, 2]))
    assert torch.equal(plain, x["idx"])


@pytest.mark.parametrize("rope", [True, False])
def test_document_mask_gives_each_document_the_logits_it_has_alone(rope):
    from scaletrain.models.gpt.model import GPT, GPTArgs

    torch.manual_seed(0)
    lengths = [4, 7, 2, 20]  # the last document is cut by the window's end
    stream = _Docs(lengths)
    stream.tokens = torch.randint(0, 50, (sum(lengths),)).numpy().astype(np.int64)
    x, _ = TokenWindows(stream, seq_len=16).batch(np.array([0]), doc_ids=True)
    model = GPT(GPTArgs(vocab_size=50, seq_len=16, n_layer=2, n_head=2, d_model=32, rope=rope)).eval()
    with torch.no_grad():
        packed = model(**x)[0]
        starts = np.cumsum([0, *lengths])
        for start, stop in zip(starts[:-1], np.minimum(starts[1:], 16)):
            alone = model(x["idx"][:, start:stop])[0]
            torch.testing.assert_close(packed[start:stop], alone, rtol=1e-5, atol=1e-5)
        # Without the mask the second document's logits see the first one: they differ.
        assert (model(x["idx"])[0, 4:11] - packed[4:11]).abs().max() > 1e-3
        # One document per row: the mask path equals the default causal path.
        torch.testing.assert_close(model(x["idx"], doc_ids=torch.zeros_like(x["idx"])), model(x["idx"]))
