"""What is being learned: how a batch is drawn, how the loss is computed, how the model is judged.

The trainer is the same for every task; a task owns its data and its metrics. Batches are drawn by
global sample position (see `scaletrain.data.loader`), so resuming a run needs only that position.
`Task` below is the protocol a task of your own (a custom loss) follows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
import xxhash
from torch import nn

from scaletrain.data.loader import PackedLoader, PreadTokens, SampleOrder, TokenWindows
from scaletrain.train.step import forward, logits_of, to_device


@runtime_checkable
class Task(Protocol):
    """What the trainer asks of a task. The built-in ones (`LanguageModeling`,
    `CausalLanguageModeling`, `Classification`) follow it; so may yours, for a loss of your own.

    A batch is `(x, y)`: `x` a tensor (the model is called `model(x)`) or a dict of tensors
    (`model(**x)`), `y` a tensor (the targets; anything your loss reads). The model's output may be
    anything (a tensor, a `transformers` ModelOutput, a dict): `loss` receives it as it is
    (`scaletrain.train.step.logits_of(output)` finds its logits).

    Optional, for exact resumes: `sample_ids(position, count)`, `data_state(position) -> dict`
    (JSON) and `check_data_state(state) -> position` (raises when the data changed).
    """

    unit: str  # what throughput counts: "tokens" or "samples"

    @property
    def num_train_samples(self) -> int:
        """Samples in the training set (an epoch; full-batch gd reads all of them per step)."""
        ...

    def train_batch(self, position: int, batch_size: int):
        """(x, y) of the samples at global positions position .. position + batch_size - 1: a
        pure function of the position, so that every rank and every resume draws the same."""
        ...

    def units(self, x) -> int:
        """Units (tokens, samples) in a batch input, for throughput."""
        ...

    def loss(self, output, y) -> torch.Tensor:
        """The scalar loss of the model's output against the targets."""
        ...

    def evaluate(self, model: nn.Module, *, batches: int, batch_size: int, device: torch.device,
                 autocast: AbstractContextManager) -> dict[str, float]:
        """Validation metrics, at least `val_loss` (every rank calls it: FSDP's forward is collective)."""
        ...


class LanguageModeling:
    """Next-token prediction over token shards; reports nats/token, perplexity and bits per byte.

    `loader` maps global sample positions to packed windows (one dataset: `PackedLoader`; several:
    `scaletrain.data.mixture.Mixture`); `val` is the validation windows (`TokenWindows` or a
    `ConcatWindows` of several). With `loader.document_mask` inputs are {"idx", "doc_ids"}.
    """

    unit = "tokens"

    def __init__(self, loader, val, *, token_bytes: np.ndarray, train_counts: np.ndarray):
        self.loader, self.val = loader, val
        self.document_mask = bool(getattr(loader, "document_mask", False))
        # One dataset: its windows and order, for inspection (a mixture has one per source).
        self.train = getattr(loader, "windows", None)
        self.order = getattr(loader, "order", None)
        self.token_bytes = torch.from_numpy(token_bytes.astype(np.int64))
        # Unigram baseline: the loss of predicting train-set token frequencies (add-one smoothed).
        counts = train_counts.astype(np.float64) + 1.0
        self.unigram_logp = torch.from_numpy(np.log(counts / counts.sum()))

    @classmethod
    def from_shards(cls, train_shards, val_shards, *, seq_len: int, seed: int, fraction: float,
                    token_bytes: np.ndarray, train_counts: np.ndarray, fingerprint: str = "",
                    document_mask: bool = False) -> "LanguageModeling":
        windows = TokenWindows(PreadTokens(train_shards), seq_len)
        order = SampleOrder(len(windows), seed, fraction, fingerprint=fingerprint)
        return cls(PackedLoader(windows, order, document_mask), TokenWindows(val_shards, seq_len),
                   token_bytes=token_bytes, train_counts=train_counts)

    @property
    def num_train_samples(self) -> int:
        return len(self.loader)

    def train_batch(self, position: int, batch_size: int):
        """The samples at global positions position .. position+batch_size-1."""
        return self.loader.batch(position, batch_size)

    def sample_ids(self, position: int, count: int) -> np.ndarray:
        """Which samples those positions are (window indices; (source, window) rows for a mixture)."""
        return self.loader.sample_ids(np.arange(position, position + count, dtype=np.int64))

    def data_state(self, position: int) -> dict:
        """The loader state at a global position, for a checkpoint: JSON-serializable."""
        return self.loader.state(position)

    def check_data_state(self, state: dict) -> int:
        """UserError if a resumed run's data or seed differs from the checkpoint's; else the
        global position the state points to."""
        return self.loader.check_state(state)

    def units(self, x) -> int:
        return (x["idx"] if isinstance(x, dict) else x).numel()

    def loss(self, output, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits_of(output).flatten(0, 1).float(), y.flatten())

    def eval_sample_count(self, batches: int, batch_size: int) -> int:
        """Windows `evaluate(batches=..., batch_size=...)` reads (0 batches: the whole split)."""
        return min(batches * batch_size, len(self.val)) if batches else len(self.val)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, batches: int, batch_size: int, device: torch.device,
                 autocast: AbstractContextManager) -> dict[str, float]:
        windows = self.val.spread(batches * batch_size if batches else len(self.val))
        nats = unigram = 0.0
        tokens = byte_count = 0
        for start in range(0, len(windows), batch_size):
            x, y = self.val.batch(windows[start : start + batch_size], doc_ids=self.document_mask)
            with autocast:
                logits = logits_of(forward(model, to_device(x, device)))
            nll = F.cross_entropy(logits.flatten(0, 1).float(), y.to(device).flatten(), reduction="sum")
            nats += float(nll)
            unigram += float(-self.unigram_logp[y].sum())
            tokens += y.numel()
            byte_count += int(self.token_bytes[y].sum())
        loss = nats / tokens
        return {
            "val_loss": loss,
            "val_ppl": math.exp(min(loss, 50.0)),
            "val_bpb": nats / math.log(2) / max(byte_count, 1),
            "unigram_loss": unigram / tokens,
            "val_tokens": tokens,
        }


def _row_tensor(row, what: str) -> torch.Tensor:
    try:
        return torch.as_tensor(row)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{what}: cannot be made a tensor ({exc})") from None


def _stack(rows: list, what: str) -> torch.Tensor:
    tensors = [_row_tensor(r, what) for r in rows]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"{what}: rows of different shapes {sorted(shapes)[:3]} in one batch; give rows "
                         "of one shape (pad or cut them to one length first)")
    return torch.stack(tensors)


class _RowsInOrder:
    """A task over a dataset of rows drawn in a resumable order (`self.order`, a SampleOrder; the
    subclass's `_gather(rows, ids)` makes the batch): the loop's data position and its state."""

    def train_batch(self, position: int, batch_size: int):
        return self._gather(self.train_set, self.order.take(position, batch_size))

    def sample_ids(self, position: int, count: int) -> np.ndarray:
        return self.order.take(position, count)

    def data_state(self, position: int) -> dict:
        return self.order.state(position)

    def check_data_state(self, state: dict) -> int:
        return self.order.check_state(state)


class Classification(_RowsInOrder):
    """Supervised classification from a map-style dataset whose rows are `(input, label)` pairs or
    dicts (`{"pixels": ..., "label": 3}`: the model is called with every key but `label_key` as a
    keyword argument, e.g. a `datasets.Dataset` with torch-convertible columns)."""

    unit = "samples"

    def __init__(self, train_set, val_set, *, seed: int, fraction: float = 1.0, fingerprint: str = "",
                 label_key: str = "label"):
        self.train_set, self.val_set = train_set, val_set
        self.label_key = label_key
        self.order = SampleOrder(len(train_set), seed, fraction, fingerprint=fingerprint or _tensor_fingerprint(train_set))

    @property
    def num_train_samples(self) -> int:
        return len(self.order)

    def _gather(self, dataset, index: np.ndarray):
        tensors = getattr(dataset, "tensors", None)
        if tensors is not None and len(tensors) == 2:  # TensorDataset: index once, no Python loop
            idx = torch.from_numpy(index)
            return tensors[0][idx], tensors[1][idx]
        items = [dataset[int(i)] for i in index]
        if items and isinstance(items[0], Mapping):
            key = self.label_key
            if key not in items[0]:
                raise KeyError(f"Classification: the dataset's rows have no {key!r} key (they have "
                               f"{sorted(items[0])[:6]}); name the label column with label_key=")
            inputs = {k: _stack([it[k] for it in items], f"column {k!r}") for k in items[0] if k != key}
            return inputs, torch.as_tensor([int(it[key]) for it in items])
        return _stack([x for x, _ in items], "inputs"), torch.as_tensor([int(y) for _, y in items])

    def units(self, x) -> int:
        return next(iter(x.values())).shape[0] if isinstance(x, dict) else x.shape[0]

    def loss(self, output, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits_of(output).float(), y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, batches: int, batch_size: int, device: torch.device,
                 autocast: AbstractContextManager) -> dict[str, float]:
        # The validation split of a classifier is small: always judge on all of it.
        total = correct = 0
        nll = 0.0
        index = np.arange(len(self.val_set))
        for start in range(0, len(index), max(batch_size, 256)):
            x, y = self._gather(self.val_set, index[start : start + max(batch_size, 256)])
            x, y = to_device(x, device), y.to(device)
            with autocast:
                logits = logits_of(forward(model, x))
            nll += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
            total += y.numel()
        return {"val_loss": nll / total, "val_accuracy": correct / total}


class CausalLanguageModeling(_RowsInOrder):
    """Next-token prediction on a map-style dataset of token-id rows: each row a sequence of ids
    (a tensor, a list) or a dict holding one under `key` (`{"input_ids": [...]}`, as a tokenized
    `datasets.Dataset` has them). A row of T + 1 ids trains T predictions: the model is called on
    ids[:-1] (`model(x)`, which a `transformers` model reads as `input_ids`) and scored on ids[1:].
    The rows of one batch must have one length (pack or cut them first)."""

    unit = "tokens"

    def __init__(self, train_set, val_set, *, seed: int, fraction: float = 1.0, key: str = "input_ids",
                 fingerprint: str = ""):
        self.train_set, self.val_set, self.key = train_set, val_set, key
        self.order = SampleOrder(len(train_set), seed, fraction, fingerprint=fingerprint)

    @property
    def num_train_samples(self) -> int:
        return len(self.order)

    def _gather(self, dataset, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [dataset[int(i)] for i in index]
        rows = [r[self.key] if isinstance(r, Mapping) else r for r in rows]
        ids = _stack(rows, f"token rows ({self.key!r})").long()
        if ids.dim() != 2 or ids.shape[1] < 2:
            raise ValueError(f"token rows: each row must be a sequence of at least 2 ids, got shape "
                             f"{list(ids.shape[1:])}")
        return ids[:, :-1], ids[:, 1:]

    def units(self, x: torch.Tensor) -> int:
        return x.numel()

    def loss(self, output, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits_of(output).flatten(0, 1).float(), y.flatten())

    def eval_sample_count(self, batches: int, batch_size: int) -> int:
        return len(self.val_set)  # every evaluation reads the whole validation split

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, batches: int, batch_size: int, device: torch.device,
                 autocast: AbstractContextManager) -> dict[str, float]:
        count = len(self.val_set) if not batches else min(len(self.val_set), batches * batch_size)
        nats, tokens = 0.0, 0
        for start in range(0, count, batch_size):
            x, y = self._gather(self.val_set, np.arange(start, min(start + batch_size, count)))
            with autocast:
                logits = logits_of(forward(model, x.to(device)))
            nats += float(F.cross_entropy(logits.flatten(0, 1).float(), y.to(device).flatten(), reduction="sum"))
            tokens += y.numel()
        loss = nats / max(tokens, 1)
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": tokens}


def _tensor_fingerprint(dataset) -> str:
    """xxh3-128 of a TensorDataset's tensors (cheap for in-memory sets); "" for other datasets."""
    tensors = getattr(dataset, "tensors", None)
    if not tensors:
        return ""
    h = xxhash.xxh3_128()
    for t in tensors:
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()
