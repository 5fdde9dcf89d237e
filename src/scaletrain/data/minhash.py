"""MinHash signatures and LSH band hashes, vectorized with numpy.

A document's shingles are its word n-grams (lower-cased, split on whitespace), each hashed to 32
bits. Permutation j maps a shingle hash x to (a_j * x + b_j) mod p with p = 2^31 - 1: with
a_j < 2^31 and x < 2^32 the product stays below 2^63, so uint64 arithmetic is exact (no
wrap-around that would bias the minimum). P(sig_j(A) == sig_j(B)) = Jaccard(A, B), so the
fraction of equal signature entries estimates it with standard error sqrt(J(1-J)/(b*r)).

LSH: the b*r entries are cut into b bands of r rows; two documents become candidates when any
band is equal, which happens with probability 1 - (1 - J^r)^b -- an S-curve around
(1/b)^(1/r) (14 bands x 8 rows: 0.72).
"""
from __future__ import annotations

import numpy as np
import xxhash

PRIME = np.uint64((1 << 31) - 1)
EMPTY = np.uint32((1 << 31) - 1)  # signature value of a document without shingles (never a hash)
_CHUNK = 8192  # shingles per (perms x shingles) block: bounds memory to ~7 MB with 112 perms
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: spreads every input bit over the output (uint64, wrapping)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def threshold(bands: int, rows: int) -> float:
    """Jaccard similarity at which the LSH S-curve is steepest: (1/b)^(1/r)."""
    return (1.0 / bands) ** (1.0 / rows)


def candidate_probability(jaccard: float, bands: int, rows: int) -> float:
    """Probability that two documents with this Jaccard share at least one band."""
    return 1.0 - (1.0 - jaccard**rows) ** bands


def shingles(text: str, ngram: int) -> np.ndarray:
    """Sorted unique 32-bit hashes (as uint64) of the word n-grams of `text`.

    A document shorter than `ngram` words is one shingle of all its words; an empty one has none.
    """
    words = text.lower().split()
    if not words:
        return np.empty(0, np.uint64)
    # Hash each distinct word once (natural text repeats words a lot), then index.
    vocab: dict[str, int] = {}
    idx = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), dtype=np.int64, count=len(words))
    uh = np.fromiter((xxhash.xxh64_intdigest(w.encode("utf-8", "surrogatepass")) for w in vocab),
                     dtype=np.uint64, count=len(vocab))
    h = uh[idx]
    n = min(ngram, len(words))
    m = len(words) - n + 1
    # A polynomial in the word hashes is order-dependent ("a b" != "b a"); one mix at the end.
    acc = h[:m].copy()
    for k in range(1, n):
        acc = acc * _M1 + h[k : k + m]
    acc = _mix64(acc)
    acc = np.sort(acc >> np.uint64(32))
    # Sort + mask: np.unique's hash path is ~10x slower here.
    return acc[np.concatenate(([True], acc[1:] != acc[:-1]))]


class MinHasher:
    """b*r permutations from a seed; `signatures` turns shingle sets into an (n, b*r) uint32 array."""

    def __init__(self, bands: int = 14, rows: int = 8, seed: int = 0) -> None:
        self.bands, self.rows = bands, rows
        rng = np.random.default_rng(seed)
        k = bands * rows
        self.a = rng.integers(1, int(PRIME), size=k, dtype=np.uint64)[:, None]
        self.b = rng.integers(0, int(PRIME), size=k, dtype=np.uint64)[:, None]
        salt = rng.integers(0, 2**63, size=(bands, rows), dtype=np.uint64)
        self._band_salt = salt

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    def signatures(self, sets: list[np.ndarray]) -> np.ndarray:
        """MinHash signature of each shingle set; documents are batched so that one numpy
        expression covers many small documents (reduceat over their segments)."""
        out = np.full((len(sets), self.num_perm), EMPTY, dtype=np.uint32)
        group: list[int] = []
        size = 0
        for i, s in enumerate(sets):
            if s.size == 0:
                continue
            if s.size >= _CHUNK:
                out[i] = self._one_large(s)
                continue
            group.append(i)
            size += s.size
            if size >= _CHUNK:
                self._group(sets, group, out)
                group, size = [], 0
        if group:
            self._group(sets, group, out)
        return out

    def _hash(self, x: np.ndarray) -> np.ndarray:
        return (self.a * x[None, :] + self.b) % PRIME  # (num_perm, len(x)), exact in uint64

    def _group(self, sets: list[np.ndarray], group: list[int], out: np.ndarray) -> None:
        x = np.concatenate([sets[i] for i in group])
        starts = np.cumsum([0] + [sets[i].size for i in group[:-1]])
        out[group] = np.minimum.reduceat(self._hash(x), starts, axis=1).T.astype(np.uint32)

    def _one_large(self, s: np.ndarray) -> np.ndarray:
        best = np.full(self.num_perm, int(PRIME), dtype=np.uint64)
        for lo in range(0, s.size, _CHUNK):
            np.minimum(best, self._hash(s[lo : lo + _CHUNK]).min(axis=1), out=best)
        return best.astype(np.uint32)

    def band_hashes(self, sig: np.ndarray) -> np.ndarray:
        """(n, bands) uint64: one hash of each band's r signature values (band index salted in)."""
        v = sig.reshape(len(sig), self.bands, self.rows).astype(np.uint64)
        acc = np.zeros((len(sig), self.bands), np.uint64)
        for j in range(self.rows):
            acc = _mix64(acc ^ v[:, :, j] ^ self._band_salt[None, :, j])
        return acc


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Fraction of equal signature entries (row-wise for 2-D inputs)."""
    return np.mean(np.asarray(sig_a) == np.asarray(sig_b), axis=-1)


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|A ∩ B| / |A ∪ B| of two sorted unique shingle arrays."""
    union = np.union1d(a, b).size
    return np.intersect1d(a, b, assume_unique=True).size / union if union else 1.0
