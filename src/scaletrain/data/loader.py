"""Deterministic, world-size-invariant, exactly resumable sample order, and packed token windows.

A run's data order is a pure function of (seed, data fingerprint, global sample position): sample
`p` of the run is item `order_e(p mod n)` of epoch `e = p // n`, where `order_e` is a keyed
permutation of the n samples (`scaletrain.data.permutation`) drawn from (seed, epoch, fingerprint).
The loader's whole state is therefore one integer, the global position, which the trainer stores in
its checkpoints: a resume jumps straight to it (O(1), nothing replayed), on any world size, because
ranks never draw samples themselves — the trainer slices each global batch into equal rank shares.

`data_state(position)` spells that integer out as (epoch, consumed, seed, fingerprint, samples) for
the checkpoint, and `check_data_state` refuses to resume when the data or the seed changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import xxhash

from scaletrain.data.permutation import Permutation
from scaletrain.errors import UserError

# The subset chosen by data.train_fraction does not move with train.seed (nor with the data
# fingerprint): changing the seed reshuffles the same data, it does not pick other data.
_SUBSET_SEED = 0x5CA1E
_EPOCH_TAG = 0xE90C  # keeps epoch keys apart from the subset key


def data_fingerprint(data_dir: str | Path, split: str = "train") -> str:
    """xxh3-128 of what a split's samples are made of: its manifest entry (files, checksums,
    token and document counts) and the tokenizer's fingerprint. Rebuilding the same data gives the
    same fingerprint; any change to the shards or the tokenizer gives another."""
    from scaletrain.data.shards import read_manifest

    manifest = read_manifest(data_dir)
    entry = manifest.get("splits", {}).get(split)
    if entry is None:
        raise UserError(f"split {split!r} not in {Path(data_dir) / 'manifest.json'}")
    blob = json.dumps({"split": entry, "tokenizer": manifest.get("tokenizer_fingerprint")}, sort_keys=True)
    return xxhash.xxh3_128_hexdigest(blob.encode("utf-8"))


def _fingerprint_word(fingerprint: str) -> list[int]:
    return [int(xxhash.xxh3_64_hexdigest(fingerprint.encode("utf-8")), 16)] if fingerprint else []


class SampleOrder:
    """Maps global sample positions to item indices, one keyed permutation per epoch."""

    def __init__(self, num_items: int, seed: int, fraction: float = 1.0, fingerprint: str = ""):
        if num_items <= 0:
            raise ValueError("no training samples")
        self.num_items = num_items
        self._len = max(1, int(round(num_items * fraction)))
        # The subset is the first `keep` values of a fixed permutation: no array of the corpus size.
        self._subset = Permutation(num_items, [_SUBSET_SEED]) if self._len < num_items else None
        self.seed, self.fingerprint = seed, fingerprint
        self._key = [seed % 2**64, *_fingerprint_word(fingerprint)]
        self._perms: dict[int, Permutation] = {}

    def __len__(self) -> int:
        return self._len

    @property
    def items(self) -> np.ndarray:
        """The item indices in use, sorted (materialized: for inspection and tests only)."""
        index = np.arange(self._len)
        return np.sort(self._subset(index)) if self._subset is not None else index

    def _perm(self, epoch: int) -> Permutation:
        perm = self._perms.get(epoch)
        if perm is None:
            if len(self._perms) > 4:  # only the current epoch (and a batch crossing into the next) is hot
                self._perms.clear()
            perm = self._perms[epoch] = Permutation(self._len, [*self._key, _EPOCH_TAG, epoch])
        return perm

    def at(self, positions: np.ndarray) -> np.ndarray:
        """Item indices of the samples at these global positions (any order, any epochs)."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty(positions.shape, dtype=np.int64)
        if positions.size == 0:
            return out
        epochs, within = np.divmod(positions, self._len)
        first, last = int(epochs.min()), int(epochs.max())
        for epoch in range(first, last + 1):
            inside = epochs == epoch if first != last else slice(None)
            out[inside] = self._perm(epoch)(within[inside])
        return self._subset(out) if self._subset is not None else out

    def take(self, position: int, count: int) -> np.ndarray:
        """Item indices of samples position .. position+count-1 (may cross an epoch boundary)."""
        return self.at(np.arange(position, position + max(count, 0), dtype=np.int64))

    # ---- resume ---------------------------------------------------------------------------------
    def state(self, position: int) -> dict:
        epoch, consumed = divmod(int(position), self._len)
        return {"position": int(position), "epoch": epoch, "consumed": consumed, "seed": self.seed,
                "fingerprint": self.fingerprint, "samples": self._len}

    def check_state(self, state: dict) -> int:
        """The global position to resume at; UserError if the checkpoint's data order was drawn from
        other data, another seed or another sample count (data.train_fraction, data.seq_len)."""
        if state.get("seed") != self.seed:
            raise UserError(f"train.seed: the checkpoint's data order was drawn with seed {state.get('seed')}, "
                            f"this run has {self.seed}; resume with the same train.seed")
        if state.get("fingerprint") != self.fingerprint:
            raise UserError(f"data: the checkpoint was trained on data with fingerprint "
                            f"{state.get('fingerprint')}, the data now has {self.fingerprint}: the prepared "
                            "shards or tokenizer changed; resume on the same prepared data")
        if state.get("samples") != self._len:
            raise UserError(f"data: the checkpoint's epoch had {state.get('samples')} samples, this run has "
                            f"{self._len} (data.train_fraction or data.seq_len changed)")
        return int(state["epoch"]) * self._len + int(state["consumed"])


class PreadTokens:
    """A split's tokens read with `os.pread` instead of through the memory map.

    Measured (benchmarks/data_loader.py): random window reads through a memmap leave every touched
    page mapped into the process, and the kernel's fault-around maps 64 KiB around each fault, so
    the loader's resident memory grew with the corpus (+60 % for a 10x corpus, all of it RssFile).
    `pread` goes through the same page cache without mapping it: resident memory stays flat, and a
    read of one window is a single syscall that releases the GIL (prefetch runs beside the step).
    """

    def __init__(self, shards):
        from scaletrain.data.shards import read_manifest

        self.dir, self.split, self.dtype = Path(shards.dir), shards.split, np.dtype(shards.dtype)
        self.doc_starts = shards.doc_starts
        files = read_manifest(self.dir)["splits"][self.split]["files"]
        self._paths = [self.dir / f["bin"] for f in files]
        self._offsets = np.cumsum([0] + [int(f["tokens"]) for f in files]).astype(np.int64)
        self._fds: dict[int, int] = {}
        self.num_tokens = int(self._offsets[-1])

    def __len__(self) -> int:
        return self.num_tokens

    def _fd(self, k: int) -> int:
        fd = self._fds.get(k)
        if fd is None:
            if len(self._fds) >= 64:  # many shards: keep a bounded number of files open
                self.close()
            fd = self._fds[k] = os.open(self._paths[k], os.O_RDONLY)
        return fd

    def get(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) as int64, across shard boundaries."""
        if start < 0 or length < 0 or start + length > self.num_tokens:
            raise IndexError(f"range [{start}, {start + length}) outside {self.split} tokens (0..{self.num_tokens})")
        size = self.dtype.itemsize
        k = int(np.searchsorted(self._offsets, start, side="right")) - 1
        parts, pos = [], start
        while pos < start + length:
            n = min(start + length, int(self._offsets[k + 1])) - pos
            data = os.pread(self._fd(k), n * size, (pos - int(self._offsets[k])) * size)
            if len(data) != n * size:
                raise UserError(f"token shard {self._paths[k]} is shorter than its manifest says")
            parts.append(np.frombuffer(data, dtype=self.dtype))
            pos += n
            k += 1
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return out.astype(np.int64)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, TypeError):  # interpreter shutdown: os may already be torn down
            pass


class TokenWindows:
    """Sequence packing: non-overlapping windows of seq_len+1 tokens over the concatenated documents
    (x = w[:-1], y = w[1:]); with `doc_ids` the inputs carry which document each token belongs to."""

    def __init__(self, shards, seq_len: int):
        self.shards = shards
        self.seq_len = seq_len
        self.num_windows = (len(shards) - 1) // seq_len
        if self.num_windows <= 0:
            raise ValueError(f"{len(shards)} tokens are fewer than one sequence of {seq_len + 1}")
        # Document start offsets from the shards' .idx files; a plain token stream is one document.
        self.doc_starts = getattr(shards, "doc_starts", None)

    def __len__(self) -> int:
        return self.num_windows

    def batch(self, windows: np.ndarray, doc_ids: bool = False):
        """(x, y) for these windows; x is {"idx": tokens, "doc_ids": ...} when `doc_ids`."""
        span = self.seq_len + 1
        rows = np.stack([self.shards.get(int(w) * self.seq_len, span) for w in windows])
        data = torch.from_numpy(rows.astype(np.int64, copy=False))
        x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
        if not doc_ids:
            return x, y
        return {"idx": x, "doc_ids": torch.from_numpy(self.doc_ids(np.asarray(windows)))}, y

    def doc_ids(self, windows: np.ndarray) -> np.ndarray:
        """[len(windows), seq_len] document numbers of the input tokens, counted from 0 in each row
        (only equality matters: attention stays inside a document)."""
        starts = np.asarray(windows, dtype=np.int64)[:, None] * self.seq_len
        positions = starts + np.arange(self.seq_len, dtype=np.int64)
        if self.doc_starts is None or len(self.doc_starts) == 0:
            return np.zeros(positions.shape, dtype=np.int64)
        docs = np.searchsorted(self.doc_starts, positions, side="right")
        return docs - docs[:, :1]

    def spread(self, count: int) -> np.ndarray:
        """`count` windows spread evenly over the stream (all of them when count >= len)."""
        if count >= self.num_windows:
            return np.arange(self.num_windows)
        return np.linspace(0, self.num_windows - 1, count).round().astype(np.int64)


class PackedLoader:
    """The training samples of one prepared dataset: windows in `SampleOrder` by global position."""

    def __init__(self, windows: TokenWindows, order: SampleOrder, document_mask: bool = False):
        self.windows, self.order, self.document_mask = windows, order, document_mask

    def __len__(self) -> int:
        return len(self.order)

    @property
    def fingerprint(self) -> str:
        return self.order.fingerprint

    def sample_ids(self, positions: np.ndarray) -> np.ndarray:
        return self.order.at(positions)

    def batch_at(self, positions: np.ndarray):
        return self.windows.batch(self.order.at(positions), doc_ids=self.document_mask)

    def batch(self, position: int, count: int):
        return self.windows.batch(self.order.take(position, count), doc_ids=self.document_mask)

    def state(self, position: int) -> dict:
        return {**self.order.state(position), "seq_len": self.windows.seq_len}

    def check_state(self, state: dict) -> int:
        if "seq_len" in state and state["seq_len"] != self.windows.seq_len:
            raise UserError(f"data.seq_len: the checkpoint was trained on windows of {state['seq_len']} "
                            f"tokens, this run has {self.windows.seq_len}")
        return self.order.check_state(state)
