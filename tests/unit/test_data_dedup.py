"""MinHash estimates against exact Jaccard; LSH finds planted near duplicates and keeps distinct
documents; exact dedup keeps the lowest id; results do not depend on the partition count."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scaletrain.data import dedup, minhash

WORDS = [f"w{i}" for i in range(2000)]


def _doc(rng: np.random.Generator, n: int = 400) -> list[str]:
    return list(rng.choice(WORDS, size=n))


def _mutate(rng: np.random.Generator, words: list[str], k: int) -> list[str]:
    out = list(words)
    for i in rng.choice(len(out), size=k, replace=False):
        out[i] = str(rng.choice(WORDS))
    return out


def test_threshold_and_s_curve() -> None:
    assert minhash.threshold(14, 8) == pytest.approx(0.719, abs=1e-3)
    # 14 x 8: pairs at 0.9 are almost always candidates, pairs at 0.3 almost never.
    assert minhash.candidate_probability(0.9, 14, 8) > 0.99
    assert minhash.candidate_probability(0.3, 14, 8) < 0.001


def test_shingles_are_order_sensitive_sets() -> None:
    a = minhash.shingles("a b c d e f", 5)
    assert len(a) == 2 and np.all(np.diff(a.astype(np.int64)) > 0)
    assert not np.array_equal(a, minhash.shingles("f e d c b a", 5))
    assert np.array_equal(minhash.shingles("A  b\nc D e F", 5), a)  # case and spacing ignored
    assert len(minhash.shingles("short doc", 5)) == 1 and len(minhash.shingles(" \n", 5)) == 0


def test_jaccard_estimates_match_exact_jaccard() -> None:
    """112 permutations: standard error sqrt(J(1-J)/112) <= 0.047 per pair. Asserted: every pair
    within 0.15 (3.2 sigma at worst), and the mean absolute error over 60 pairs below 0.03."""
    rng = np.random.default_rng(0)
    hasher = minhash.MinHasher(14, 8, seed=0)
    errors = []
    for k in range(60):
        base = _doc(rng)
        other = _mutate(rng, base, int(rng.integers(0, 200)))
        a, b = minhash.shingles(" ".join(base), 5), minhash.shingles(" ".join(other), 5)
        sig = hasher.signatures([a, b])
        errors.append(float(minhash.estimated_jaccard(sig[0], sig[1])) - minhash.exact_jaccard(a, b))
    errors = np.abs(errors)
    assert errors.max() < 0.15 and errors.mean() < 0.03


def test_batched_signatures_equal_one_by_one() -> None:
    rng = np.random.default_rng(1)
    sets = [minhash.shingles(" ".join(_doc(rng, int(n))), 3) for n in rng.integers(0, 3000, 40)]
    sets.append(np.empty(0, np.uint64))
    h = minhash.MinHasher(4, 4, seed=3)
    together = h.signatures(sets)
    for s, row in zip(sets, together):
        assert np.array_equal(h.signatures([s])[0], row)
    assert np.all(together[-1] == minhash.EMPTY)
    # A set larger than one block: the minimum over blocks equals the direct minimum.
    big = np.sort(rng.integers(0, 2**32, 20_000, dtype=np.uint64))
    direct = ((h.a * big[None, :] + h.b) % minhash.PRIME).min(axis=1)
    assert np.array_equal(h.signatures([big])[0], direct.astype(np.uint32))


def _run_dedup(tmp: Path, docs: list[str], tasks: int, partitions: int) -> tuple[set[int], set[int]]:
    """Docs spread over `tasks` files as the pipeline does; returns (exact, near) removed indices."""
    hasher = minhash.MinHasher(14, 8, seed=0)
    chunks = np.array_split(np.arange(len(docs)), tasks)
    files, sigs, id_of = [], {}, {}
    for t, idx in enumerate(chunks):
        texts = [docs[i] for i in idx]
        sets = [minhash.shingles(x, 5) for x in texts]
        sig = hasher.signatures(sets)
        sigs[t] = sig
        for local, i in enumerate(idx):
            id_of[int(dedup.doc_ids(t, len(idx))[local])] = int(i)
        f = tmp / f"{tasks}-{partitions}-{t}.npz"
        dedup.write_partitions(f, t, dedup.exact_hashes([x.encode() for x in texts]),
                               hasher.band_hashes(sig), np.array([s.size > 0 for s in sets]), partitions)
        files.append(f)

    def signatures(ids: np.ndarray) -> np.ndarray:
        return np.stack([sigs[int(i >> 32)][int(i & 0xFFFFFFFF)] for i in ids])

    exact = dedup.exact_duplicates(files, partitions)
    near, counts = dedup.near_duplicates(files, partitions, exact, minhash.threshold(14, 8), signatures)
    assert counts["verified_pairs"] <= counts["candidate_pairs"]
    return {id_of[int(i)] for i in exact}, {id_of[int(i)] for i in near}


def test_planted_duplicates_found_and_distinct_documents_kept(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    originals = [_doc(rng) for _ in range(30)]
    docs = [" ".join(d) for d in originals]
    # Planted after the originals: 5 exact copies, 6 near copies (2 % of words changed,
    # Jaccard ~0.9), 4 moderately edited ones (40 % changed, Jaccard ~0.2) that must stay.
    exact_src = [0, 3, 6, 9, 12]
    near_src = [1, 4, 7, 10, 13, 16]
    far_src = [2, 5, 8, 11]
    docs += [docs[i] for i in exact_src]
    docs += [" ".join(_mutate(rng, originals[i], 8)) for i in near_src]
    docs += [" ".join(_mutate(rng, originals[i], 160)) for i in far_src]
    # A chain: a near copy of a near copy is removed too, as one cluster keeping the first.
    docs.append(" ".join(_mutate(rng, docs[35].split(), 4)))
    n = len(docs)
    first_exact = set(range(30, 35))
    first_near = set(range(35, 41)) | {n - 1}
    for tasks, partitions in ((1, 1), (4, 7)):
        exact, near = _run_dedup(tmp_path, docs, tasks, partitions)
        assert exact == first_exact
        assert near == first_near
        assert not (exact | near) & (set(range(30)) | set(range(41, 45)))


def test_empty_documents_are_never_near_duplicates(tmp_path: Path) -> None:
    docs = ["", " ", "alpha beta gamma delta epsilon zeta"]
    exact, near = _run_dedup(tmp_path, docs, 1, 2)
    assert exact == set() and near == set()


def test_min_label_finds_connected_components() -> None:
    """Every node's label is the smallest node of its component (checked by a breadth-first search)."""
    rng = np.random.default_rng(5)
    for n, m in ((1, 0), (10, 4), (300, 200), (2000, 1900)):
        edges = rng.integers(0, n, size=(m, 2))
        label = dedup.min_label(n, edges)
        neighbours = {i: set() for i in range(n)}
        for a, b in edges.tolist():
            neighbours[a].add(b)
            neighbours[b].add(a)
        expected = np.full(n, -1)
        for start in range(n):
            if expected[start] >= 0:
                continue
            seen, todo = {start}, [start]
            while todo:
                for j in neighbours[todo.pop()] - seen:
                    seen.add(j)
                    todo.append(j)
            expected[list(seen)] = min(seen)
        assert np.array_equal(label, expected)
    # A long chain, linked in the worst order for label propagation.
    chain = np.column_stack([np.arange(999, 0, -1), np.arange(998, -1, -1)])
    assert np.array_equal(dedup.min_label(1000, chain), np.zeros(1000, np.int64))
