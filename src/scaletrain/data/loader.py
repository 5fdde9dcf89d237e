"""Deterministic, exactly resumable batch order.

A run's data order is a pure function of (seed, sample position): sample `p` of the run is item
`order(p // n)[p % n]` where `order(epoch)` is a permutation drawn from a generator seeded with
(seed, epoch). The loader's whole state is therefore one integer, the global position, which a
checkpoint stores and a resume restores — no iterator state, no worker state to replay.
"""

from __future__ import annotations

import numpy as np
import torch

# The subset chosen by data.train_fraction does not move with train.seed: changing the seed
# reshuffles the same data, it does not pick other data.
_SUBSET_SEED = 0x5CA1E


class SampleOrder:
    """Maps a global sample position to an item index, epoch by epoch."""

    def __init__(self, num_items: int, seed: int, fraction: float = 1.0):
        if num_items <= 0:
            raise ValueError("no training samples")
        keep = max(1, int(round(num_items * fraction)))
        if keep < num_items:
            subset = np.random.default_rng(_SUBSET_SEED).permutation(num_items)[:keep]
            self.items = np.sort(subset)
        else:
            self.items = np.arange(num_items)
        self.seed = seed
        self._epoch = -1
        self._perm = self.items

    def __len__(self) -> int:
        return len(self.items)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = self.items[rng.permutation(len(self.items))]
            self._epoch = epoch
        return self._perm

    def take(self, position: int, count: int) -> np.ndarray:
        """Item indices of samples position .. position+count-1 (may cross an epoch boundary)."""
        n = len(self.items)
        if count <= 0:
            return np.empty(0, dtype=np.int64)
        positions = np.arange(position, position + count, dtype=np.int64)
        epochs = positions // n
        if epochs[0] == epochs[-1]:  # the usual case: one vectorized lookup, no Python loop
            return self._order(int(epochs[0]))[positions % n]
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            inside = epochs == epoch
            out[inside] = self._order(int(epoch))[positions[inside] % n]
        return out


class TokenWindows:
    """Non-overlapping windows of seq_len+1 tokens over a token stream (x = w[:-1], y = w[1:])."""

    def __init__(self, shards, seq_len: int):
        self.shards = shards
        self.seq_len = seq_len
        self.num_windows = (len(shards) - 1) // seq_len
        if self.num_windows <= 0:
            raise ValueError(f"{len(shards)} tokens are fewer than one sequence of {seq_len + 1}")

    def __len__(self) -> int:
        return self.num_windows

    def batch(self, windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        span = self.seq_len + 1
        rows = np.stack([self.shards.get(int(w) * self.seq_len, span) for w in windows])
        data = torch.from_numpy(rows.astype(np.int64, copy=False))
        return data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def spread(self, count: int) -> np.ndarray:
        """`count` windows spread evenly over the stream (all of them when count >= len)."""
        if count >= self.num_windows:
            return np.arange(self.num_windows)
        return np.linspace(0, self.num_windows - 1, count).round().astype(np.int64)
