"""Weighted mixing of prepared datasets: proportions, determinism, resume, config errors."""

from collections import Counter

import numpy as np
import pytest
import torch

from loader_data import random_docs, write_prepared
from scaletrain.config.load import load_config
from scaletrain.data.loader import PackedLoader, SampleOrder, TokenWindows, data_fingerprint
from scaletrain.data.mixture import Mixture, largest_remainder
from scaletrain.data.shards import TokenShards
from scaletrain.errors import UserError

SEQ = 8


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    # Sizes chosen so that the small source repeats (several epochs) and the large one does not.
    return [write_prepared(root / name, random_docs(seed, n), random_docs(seed + 100, 4))
            for name, seed, n in (("a", 1, 20), ("b", 2, 200), ("c", 3, 60))]


def _mixture(dirs, weights, seed=3, block=1000):
    sources = []
    for d in dirs:
        windows = TokenWindows(TokenShards(d, "train"), SEQ)
        sources.append(PackedLoader(windows, SampleOrder(len(windows), seed, fingerprint=data_fingerprint(d))))
    return Mixture(sources, weights, seed, block=block)


def test_largest_remainder_counts():
    assert largest_remainder([1, 1, 1], 10).tolist() == [4, 3, 3]
    assert largest_remainder([0.7, 0.2, 0.1], 1000).tolist() == [700, 200, 100]
    assert largest_remainder([2, 1], 1000).tolist() == [667, 333]


def test_proportions_follow_the_weights(dirs):
    mix = _mixture(dirs, [0.5, 0.3, 0.2])
    ids = mix.sample_ids(np.arange(5000))
    share = np.bincount(ids[:, 0], minlength=3) / 5000
    assert share.tolist() == [0.5, 0.3, 0.2]  # exact over whole blocks
    # Any window of 200 samples is close to the weights (shuffled within blocks, not in runs).
    window = np.bincount(ids[2345:2545, 0], minlength=3) / 200
    assert np.abs(window - [0.5, 0.3, 0.2]).max() < 0.12
    # Each source's samples are its own resumable order: source a (few windows) cycles epochs,
    # every one of its windows once per epoch.
    a = ids[ids[:, 0] == 0, 1]
    n_a = len(mix.sources[0])
    assert len(a) == 2500 and len(a) > 3 * n_a
    assert sorted(a[:n_a].tolist()) == list(range(n_a))
    assert np.array_equal(a, mix.sources[0].sample_ids(np.arange(len(a))))


def test_batches_hold_the_located_windows_in_order(dirs):
    mix = _mixture(dirs, [1, 1, 1])
    x, y = mix.batch(990, 20)  # crosses a block boundary
    ids = mix.sample_ids(np.arange(990, 1010))
    for row, (source, window) in enumerate(ids):
        expect = mix.sources[source].windows.shards.get(int(window) * SEQ, SEQ + 1)
        assert x[row].tolist() == expect[:-1].tolist() and y[row].tolist() == expect[1:].tolist()


def test_resume_is_a_pure_function_of_the_position(dirs):
    a, b = _mixture(dirs, [0.6, 0.3, 0.1]), _mixture(dirs, [0.6, 0.3, 0.1])
    straight = a.sample_ids(np.arange(3000))
    state = a.state(1234)
    # Per-source consumption at the position matches a count of what was drawn before it.
    counts = Counter(straight[:1234, 0].tolist())
    assert [s["position"] for s in state["sources"]] == [counts[0], counts[1], counts[2]]
    position = b.check_state(state)
    assert position == 1234
    assert np.array_equal(b.sample_ids(np.arange(position, 3000)), straight[1234:])
    x1, _ = a.batch(1234, 7)
    x2, _ = b.batch(1234, 7)
    assert torch.equal(x1, x2)
    with pytest.raises(UserError, match="data.mixture"):
        _mixture(dirs, [0.5, 0.3, 0.2]).check_state(state)
    with pytest.raises(UserError, match="train.seed"):
        _mixture(dirs, [0.6, 0.3, 0.1], seed=4).check_state(state)


def test_document_ids_pass_through_the_mixture(dirs):
    sources = []
    for d in dirs:
        windows = TokenWindows(TokenShards(d, "train"), SEQ)
        sources.append(PackedLoader(windows, SampleOrder(len(windows), 0), document_mask=True))
    mix = Mixture(sources, [1, 2, 1], 0, block=100)
    x, _ = mix.batch(0, 12)
    ids = mix.sample_ids(np.arange(12))
    assert set(x) == {"idx", "doc_ids"} and x["doc_ids"].shape == (12, SEQ)
    for row, (source, window) in enumerate(ids):
        assert x["doc_ids"][row].tolist() == mix.sources[source].windows.doc_ids(np.array([window]))[0].tolist()


def test_config_mixture_builds_a_task_and_refuses_another_tokenizer(dirs, tmp_path):
    from scaletrain.train.build import build_task

    mixture = [{"path": str(dirs[0]), "weight": 1}, {"path": str(dirs[1]), "weight": 3}]
    cfg = load_config("gpt-tiny", ["train.threads=1", "log.progress=false", f"data.seq_len={SEQ}",
                                   f"data.mixture={mixture}", "data.document_mask=true"])
    task, args, _, _ = build_task(cfg, torch.device("cpu"))
    from scaletrain.data.tokenizer import load_tokenizer

    assert args["vocab_size"] == load_tokenizer(dirs[0] / "tokenizer.json").get_vocab_size()
    assert task.num_train_samples == sum(len(s) for s in task.loader.sources)
    x, y = task.train_batch(0, 8)
    assert x["idx"].shape == (8, SEQ) and task.units(x) == 8 * SEQ
    share = np.bincount(task.sample_ids(0, 4096)[:, 0], minlength=2)
    assert share.tolist() == [1024, 3072]
    assert task.check_data_state(task.data_state(77)) == 77

    other = write_prepared(tmp_path / "other", random_docs(9, 20), random_docs(9, 4),
                           tokenizer_text="a different corpus, so a different tokenizer")
    bad = [{"path": str(dirs[0]), "weight": 1}, {"path": str(other), "weight": 1}]
    cfg = load_config("gpt-tiny", ["log.progress=false", f"data.mixture={bad}"])
    with pytest.raises(UserError, match="another tokenizer"):
        build_task(cfg, torch.device("cpu"))
    with pytest.raises(UserError, match="data.mixture"):
        load_config("gpt-tiny", [f"data.mixture=[{{path: {tmp_path}, weight: 1}}]"])
    with pytest.raises(UserError, match="below one sample"):
        _mixture(dirs, [1, 1e-6, 1])
