"""Deterministic weighted mixing of several prepared datasets.

The source of global sample p is a pure function of (seed, p): positions are cut into blocks of
`block` samples; every block holds exactly `counts[i]` samples of source i (weights rounded to the
block by largest remainder), in an order shuffled per block from (seed, block index). The j-th
sample that source i contributes is then sample j of that source's own resumable order
(`PackedLoader`: its own epochs, so a small heavily weighted source repeats, a large one does not).
No counters are carried from step to step: resuming at position p needs p only, like one dataset.
"""

from __future__ import annotations

import json

import numpy as np
import torch
import xxhash

from scaletrain.errors import UserError

_BLOCK = 4096  # proportions are exact per block; within a block they drift by at most a few samples
_MIX_TAG = 0x313C


def largest_remainder(weights: list[float], total: int) -> np.ndarray:
    """Integer counts summing to `total`, proportional to `weights` (Hamilton's method; ties go to
    the earlier source, so the result is deterministic)."""
    w = np.asarray(weights, dtype=np.float64)
    quotas = w / w.sum() * total
    counts = np.floor(quotas).astype(np.int64)
    order = sorted(range(len(w)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: total - int(counts.sum())]:
        counts[i] += 1
    return counts


class Mixture:
    """Several `PackedLoader`s behind one global position, in proportions `weights`."""

    def __init__(self, sources: list, weights: list[float], seed: int, names: list[str] | None = None,
                 block: int = _BLOCK):
        if not sources or len(sources) != len(weights):
            raise ValueError("a mixture needs one weight per source")
        self.names = names or [f"source {i}" for i in range(len(sources))]
        for name, w in zip(self.names, weights):
            if not w > 0:
                raise UserError(f"data.mixture: weight of {name} must be positive, got {w}")
        self.sources, self.weights, self.seed, self.block = sources, list(weights), seed, block
        self.counts = largest_remainder(weights, block)
        for name, c, w in zip(self.names, self.counts, weights):
            if c == 0:
                raise UserError(f"data.mixture: weight {w} of {name} is below one sample in {block}")
        # The mixture's identity: its sources' fingerprints and the weights as rounded to the block.
        blob = json.dumps({"sources": [s.fingerprint for s in sources], "counts": self.counts.tolist()})
        self.fingerprint = xxhash.xxh3_128_hexdigest(blob.encode("utf-8"))
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    @property
    def document_mask(self) -> bool:
        return self.sources[0].document_mask

    def _pattern(self, block_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(source of each slot, rank of the slot among its source's slots) for one block."""
        if self._cached is None or self._cached[0] != block_index:
            slots = np.repeat(np.arange(len(self.sources)), self.counts)
            rng = np.random.default_rng([self.seed % 2**64, _MIX_TAG, block_index])
            slots = slots[rng.permutation(self.block)]
            rank = np.empty(self.block, dtype=np.int64)
            for i in range(len(self.sources)):
                mine = slots == i
                rank[mine] = np.arange(int(mine.sum()))
            self._cached = (block_index, slots, rank)
        return self._cached[1], self._cached[2]

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, position within that source) of each global position."""
        positions = np.asarray(positions, dtype=np.int64)
        blocks, offsets = np.divmod(positions, self.block)
        source = np.empty(positions.shape, dtype=np.int64)
        local = np.empty(positions.shape, dtype=np.int64)
        for b in np.unique(blocks):
            inside = blocks == b
            slots, rank = self._pattern(int(b))
            source[inside] = slots[offsets[inside]]
            local[inside] = int(b) * self.counts[source[inside]] + rank[offsets[inside]]
        return source, local

    def sample_ids(self, positions: np.ndarray) -> np.ndarray:
        """[n, 2]: (source, item index within the source) of each position."""
        source, local = self.locate(positions)
        items = np.empty_like(local)
        for i, s in enumerate(self.sources):
            mine = source == i
            if mine.any():
                items[mine] = s.sample_ids(local[mine])
        return np.stack([source, items], axis=1)

    def batch(self, position: int, count: int):
        source, local = self.locate(np.arange(position, position + count, dtype=np.int64))
        parts = {}
        for i, s in enumerate(self.sources):
            mine = np.flatnonzero(source == i)
            if mine.size:
                parts[i] = (mine, s.batch_at(local[mine]))
        return _scatter(parts, count)

    # ---- resume ---------------------------------------------------------------------------------
    def consumed(self, position: int) -> np.ndarray:
        """How many samples each source has given before global position `position`."""
        b, offset = divmod(int(position), self.block)
        slots, _ = self._pattern(b)
        return b * self.counts + np.bincount(slots[:offset], minlength=len(self.sources))

    def state(self, position: int) -> dict:
        used = self.consumed(position)
        return {"position": int(position), "seed": self.seed, "fingerprint": self.fingerprint,
                "block": self.block, "sources": [s.state(int(u)) for s, u in zip(self.sources, used)]}

    def check_state(self, state: dict) -> int:
        if state.get("seed") != self.seed:
            raise UserError(f"train.seed: the checkpoint's data order was drawn with seed {state.get('seed')}, "
                            f"this run has {self.seed}; resume with the same train.seed")
        if state.get("fingerprint") != self.fingerprint or len(state.get("sources", [])) != len(self.sources):
            raise UserError("data.mixture: the checkpoint was trained on another mixture (other prepared "
                            "data or other weights); resume with the same data.mixture")
        for s, saved in zip(self.sources, state["sources"]):
            s.check_state(saved)
        return int(state["position"])


def _scatter(parts: dict, count: int):
    """Reassemble per-source (rows, (x, y)) into one batch in global order."""
    y = torch.empty((count, *next(iter(parts.values()))[1][1].shape[1:]), dtype=torch.int64)
    first_x = next(iter(parts.values()))[1][0]
    if isinstance(first_x, dict):
        x = {k: torch.empty((count, *v.shape[1:]), dtype=v.dtype) for k, v in first_x.items()}
    else:
        x = torch.empty((count, *first_x.shape[1:]), dtype=first_x.dtype)
    for rows, (px, py) in parts.values():
        index = torch.from_numpy(rows)
        y[index] = py
        if isinstance(x, dict):
            for k in x:
                x[k][index] = px[k]
        else:
            x[index] = px
    return x, y


class ConcatWindows:
    """Several sources' validation windows as one list (evaluation judges the whole mixture)."""

    def __init__(self, windows: list):
        self.parts = windows
        self.offsets = np.cumsum([0] + [len(w) for w in windows])
        self.seq_len = windows[0].seq_len

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def batch(self, windows: np.ndarray, doc_ids: bool = False):
        windows = np.asarray(windows, dtype=np.int64)
        part = np.searchsorted(self.offsets, windows, side="right") - 1
        parts = {}
        for i, w in enumerate(self.parts):
            mine = np.flatnonzero(part == i)
            if mine.size:
                parts[i] = (mine, w.batch(windows[mine] - self.offsets[i], doc_ids=doc_ids))
        return _scatter(parts, len(windows))

    def spread(self, count: int) -> np.ndarray:
        if count >= len(self):
            return np.arange(len(self))
        return np.linspace(0, len(self) - 1, count).round().astype(np.int64)
