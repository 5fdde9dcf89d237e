"""Global dedup decisions over per-task hash files, one hash partition at a time.

Document ids are uint64: task index << 32 | index within the task, so sorting ids is input order
and "keep the lowest id" keeps the first occurrence, whatever the number of workers.

Each task writes its rows into P partitions (by hash), in one `.npz` per task:
  `e{p}`: exact rows   (k, 3) uint64: XXH3-128 high, low, doc id
  `n{p}`: band rows    (k, 3) uint64: band, band hash, doc id
A partition holds every row whose hash falls in it, from every task, so duplicates meet within
one partition; memory is the partition's rows (about docs x bands x 24 B / P), not the corpus.

The local engine reads the partitions one at a time (`exact_duplicates`, `near_duplicates`); the
Ray engine groups the same rows by key with Ray's shuffle (`ray_engine.py`). Both then apply the
same functions to each group of rows (`group_edges`, `verify_pairs`) and the same connected
components (`cluster_removals`), so they decide the same documents.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import xxhash

from scaletrain.atomic import atomic_open
from scaletrain.data.minhash import estimated_jaccard

TASK_SHIFT = np.uint64(32)


def doc_ids(task: int, n: int) -> np.ndarray:
    return (np.uint64(task) << TASK_SHIFT) | np.arange(n, dtype=np.uint64)


def exact_hashes(texts: list[bytes]) -> np.ndarray:
    """(n, 2) uint64 XXH3-128 (high, low) of each normalized text's UTF-8 bytes."""
    out = np.empty((len(texts), 2), dtype=np.uint64)
    for i, t in enumerate(texts):
        h = xxhash.xxh3_128_intdigest(t)
        out[i] = (h >> 64, h & 0xFFFFFFFFFFFFFFFF)
    return out


def write_partitions(path: Path, task: int, exact: np.ndarray | None, bands: np.ndarray | None,
                     has_shingles: np.ndarray | None, partitions: int) -> None:
    """Write one task's rows, split by partition, atomically (the task's marker comes after)."""
    arrays: dict[str, np.ndarray] = {}
    p = np.uint64(partitions)
    if exact is not None:
        ids = doc_ids(task, len(exact))
        rows = np.column_stack([exact[:, 0], exact[:, 1], ids])
        part = exact[:, 1] % p
        for k in range(partitions):
            arrays[f"e{k}"] = rows[part == k]
    if bands is not None:
        n, b = bands.shape
        ids = np.repeat(doc_ids(task, n), b)
        band = np.tile(np.arange(b, dtype=np.uint64), n)
        rows = np.column_stack([band, bands.reshape(-1), ids])
        if has_shingles is not None:  # documents without words would all collide
            rows = rows[np.repeat(has_shingles, b)]
        part = rows[:, 1] % p
        for k in range(partitions):
            arrays[f"n{k}"] = rows[part == k]
    with atomic_open(path, "wb", durable=False) as f:  # scratch (see stages.scan)
        np.savez(f, **arrays)


def _load(files: list[Path], key: str) -> np.ndarray:
    parts = []
    for f in files:
        with np.load(f) as z:
            if key in z.files:
                parts.append(z[key])
    return np.concatenate(parts) if parts else np.empty((0, 3), np.uint64)


def task_rows(file: Path, kind: str) -> np.ndarray:
    """Every row of one task's file of one kind (`e`: exact, `n`: near), all partitions together."""
    with np.load(file) as z:
        parts = [z[k] for k in z.files if k[0] == kind]
    return np.concatenate(parts) if parts else np.empty((0, 3), np.uint64)


def group_edges(keys: tuple[np.ndarray, ...], ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by (keys..., id): (first id of each equal-key group, id) for every other row."""
    order = np.lexsort((ids, *reversed(keys)))
    ids = ids[order]
    same = np.ones(len(ids), dtype=bool)
    same[0:1] = False
    for k in keys:
        k = k[order]
        same[1:] &= k[1:] == k[:-1]
    start_pos = np.where(~same, np.arange(len(ids)), 0)
    first = ids[np.maximum.accumulate(start_pos)] if len(ids) else ids
    return first[same], ids[same]


def exact_duplicates(files: list[Path], partitions: int) -> np.ndarray:
    """Sorted ids of documents whose text equals that of a lower id."""
    removed = []
    for k in range(partitions):
        rows = _load(files, f"e{k}")
        if len(rows):
            _, dup = group_edges((rows[:, 0], rows[:, 1]), rows[:, 2])
            removed.append(dup)
    return np.unique(np.concatenate(removed)) if removed else np.empty(0, np.uint64)


def near_duplicates(files: list[Path], partitions: int, exclude: np.ndarray, threshold: float,
                    signatures: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, dict[str, int]]:
    """Sorted ids to remove as near duplicates, and counts (candidate and verified pairs).

    Candidates share a band; a pair is kept as an edge when its estimated Jaccard (from the
    full signatures, `signatures(ids)`) reaches `threshold`, which drops most of the LSH false
    positives near the S-curve. Edges join clusters; each cluster keeps its lowest id.
    """
    pairs = []
    for k in range(partitions):
        rows = _load(files, f"n{k}")
        if len(exclude):
            rows = rows[~np.isin(rows[:, 2], exclude)]
        if len(rows):
            pairs.append(np.column_stack(group_edges((rows[:, 0], rows[:, 1]), rows[:, 2])))
    checked = verify_pairs(np.concatenate(pairs) if pairs else np.empty((0, 2), np.uint64), threshold, signatures)
    return cluster_removals(checked)


def verify_pairs(pairs: np.ndarray, threshold: float,
                 signatures: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """(k, 3) uint64 rows (u, v, verified) of the distinct candidate pairs (u, v)."""
    if not len(pairs):
        return np.empty((0, 3), np.uint64)
    pairs = np.unique(pairs, axis=0)
    nodes, inv = np.unique(pairs, return_inverse=True)
    sig = signatures(nodes)
    inv = inv.reshape(-1, 2)
    ok = estimated_jaccard(sig[inv[:, 0]], sig[inv[:, 1]]) >= threshold
    return np.column_stack([pairs, ok.astype(np.uint64)])


def cluster_removals(checked: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """From checked pairs (u, v, verified), possibly repeated: the sorted ids that are not the lowest
    of their cluster (connected components of the verified pairs), and the pair counts."""
    if not len(checked):
        return np.empty(0, np.uint64), {"candidate_pairs": 0, "verified_pairs": 0}
    checked = np.unique(checked, axis=0)  # a pair found in several bands (or blocks) counts once
    edges = checked[checked[:, 2] == 1, :2]
    nodes, inv = np.unique(edges, return_inverse=True)
    roots = min_label(len(nodes), inv.reshape(-1, 2))
    removed = nodes[roots != np.arange(len(nodes))]
    return removed, {"candidate_pairs": int(len(checked)), "verified_pairs": int(len(edges))}


def min_label(n: int, edges: np.ndarray) -> np.ndarray:
    """The smallest node index of every node's connected component (= its lowest doc id, nodes
    being sorted ids): labels flow along the edges and pointer jumping shortens the chains,
    vectorized, until nothing changes (a few rounds: the rounds grow with the log of the longest
    chain, not with the number of edges)."""
    label = np.arange(n, dtype=np.int64)
    if not len(edges):
        return label
    a, b = edges[:, 0].astype(np.int64), edges[:, 1].astype(np.int64)
    while True:
        low = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        np.minimum.at(new, label, new)  # a node's label learns what its members learnt
        while True:
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            return label
        label = new
