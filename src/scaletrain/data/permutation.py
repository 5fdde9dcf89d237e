"""A keyed pseudo-random permutation of [0, n), evaluated element by element.

The data order must be a pure function of (seed, epoch, position) and must not cost memory in
proportion to the corpus: a materialized `np.random.permutation(n)` is 8 bytes a sample (8 GB for a
billion windows) and must be rebuilt at every epoch and every resume. A Feistel network is a
bijection on [0, 2^bits) for any round function; "cycle walking" (re-encrypting values that land in
[n, 2^bits)) restricts it to a bijection on [0, n). Each lookup is a few vectorized integer ops,
so position -> sample is O(1) in time and memory, and a resume needs no replay.
"""

from __future__ import annotations

import numpy as np

_ROUNDS = 6  # Luby-Rackoff: 4 rounds already give a pseudo-random permutation; 6 for margin
_C1, _C2, _MASK64 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, (1 << 64) - 1
_M1, _M2 = np.uint64(_C1), np.uint64(_C2)
_SMALL = 48  # below this many indices plain Python ints beat numpy's per-call overhead (~10x at 4)
# Up to this many samples the whole permutation is computed once (vectorized, 4 bytes a sample:
# 4 MiB at the limit) and a lookup is one indexing op: the trainer asks for a batch every step, and
# the Feistel rounds per batch cost ~0.6 ms of Python-held time, a fifth of a small model's step.
# Above it the memory argument wins and every lookup is computed; both give the same values.
TABLE_LIMIT = 1 << 20


def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
    """splitmix64's finalizer of x ^ key: every input bit flips about half the output bits."""
    z = x ^ key
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _mix_int(x: int, key: int) -> int:
    """`_mix` on one Python int (same result: products wrap at 64 bits)."""
    z = x ^ key
    z = ((z ^ (z >> 30)) * _C1) & _MASK64
    z = ((z ^ (z >> 27)) * _C2) & _MASK64
    return z ^ (z >> 31)


class Permutation:
    """`perm(i)` for an array of indices in [0, n): a bijection of [0, n) fixed by `key`."""

    def __init__(self, n: int, key: list[int]):
        if n <= 0:
            raise ValueError(f"a permutation needs n >= 1, got {n}")
        bits = max(2, (n - 1).bit_length())
        bits += bits % 2  # a balanced network: two halves of equal width
        self.n = n
        self._half = np.uint64(bits // 2)
        self._mask = np.uint64((1 << (bits // 2)) - 1)
        words = [int(k) % 2**64 for k in key]  # SeedSequence wants non-negative entropy
        self._keys = np.random.default_rng(words).integers(0, 2**63, size=_ROUNDS, dtype=np.uint64)
        self._int_keys = [int(k) for k in self._keys]
        self._int_half, self._int_mask = bits // 2, (1 << (bits // 2)) - 1
        self._table: np.ndarray | None = None  # built on first use when n <= TABLE_LIMIT

    def _one(self, x: int) -> int:
        half, mask = self._int_half, self._int_mask
        while True:  # cycle walking, as in __call__
            left, right = x >> half, x & mask
            for k in self._int_keys:
                left, right = right, left ^ (_mix_int(right, k) & mask)
            x = (left << half) | right
            if x < self.n:
                return x

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self._half, x & self._mask
        for k in self._keys:
            left, right = right, left ^ (_mix(right, k) & self._mask)
        return (left << self._half) | right

    def __call__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.n):
            raise IndexError(f"index outside [0, {self.n})")
        if self.n <= TABLE_LIMIT:
            if self._table is None:
                self._table = self._build_table()
            return self._table[index].astype(np.int64)
        return self._compute(index)

    def _build_table(self) -> np.ndarray:
        """perm(i) for every i: the network is evaluated once over its whole domain [0, 2^bits)
        (< 4n values), then cycle walking follows that table instead of re-encrypting; the same
        values as `_compute`, for a handful of numpy calls (an epoch of a small dataset is short, so
        this is paid often)."""
        domain = self._encrypt(np.arange(1 << (2 * int(self._half)), dtype=np.uint64)).astype(np.int64)
        out = domain[: self.n].copy()
        outside = np.flatnonzero(out >= self.n)
        while outside.size:
            out[outside] = domain[out[outside]]
            outside = outside[out[outside] >= self.n]
        return out.astype(np.int32)

    def _compute(self, index: np.ndarray) -> np.ndarray:
        if index.size <= _SMALL:  # a micro-batch: the trainer's usual call
            return np.array([self._one(int(i)) for i in index.ravel()], dtype=np.int64).reshape(index.shape)
        out = self._encrypt(index.astype(np.uint64))
        # The domain is < 4n, so on average fewer than 3 extra rounds of walking; each walk step
        # stays on the cycle of the original value, which keeps the map a bijection of [0, n).
        outside = out >= np.uint64(self.n)
        while outside.any():
            out[outside] = self._encrypt(out[outside])
            outside = out >= np.uint64(self.n)
        return out.astype(np.int64)
