"""What is being learned: how a batch is drawn, how the loss is computed, how the model is judged.

The trainer is the same for every task; a task owns its data and its metrics. Batches are drawn by
global sample position (see `scaletrain.data.loader`), so resuming a run needs only that position.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scaletrain.data.loader import SampleOrder, TokenWindows


class LanguageModeling:
    """Next-token prediction over token shards; reports nats/token, perplexity and bits per byte."""

    unit = "tokens"

    def __init__(self, train_shards, val_shards, *, seq_len: int, seed: int, fraction: float,
                 token_bytes: np.ndarray, train_counts: np.ndarray):
        self.train = TokenWindows(train_shards, seq_len)
        self.val = TokenWindows(val_shards, seq_len)
        self.order = SampleOrder(len(self.train), seed, fraction)
        self.token_bytes = torch.from_numpy(token_bytes.astype(np.int64))
        # Unigram baseline: the loss of predicting train-set token frequencies (add-one smoothed).
        counts = train_counts.astype(np.float64) + 1.0
        self.unigram_logp = torch.from_numpy(np.log(counts / counts.sum()))

    @property
    def num_train_samples(self) -> int:
        return len(self.order)

    def train_batch(self, position: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train.batch(self.order.take(position, batch_size))

    def units(self, x: torch.Tensor) -> int:
        return x.numel()

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, batches: int, batch_size: int, device: torch.device,
                 autocast: AbstractContextManager) -> dict[str, float]:
        windows = self.val.spread(batches * batch_size if batches else len(self.val))
        nats = unigram = 0.0
        tokens = byte_count = 0
        for start in range(0, len(windows), batch_size):
            x, y = self.val.batch(windows[start : start + batch_size])
            with autocast:
                logits = model(x.to(device))
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


class Classification:
    """Supervised classification from a map-style dataset of (input, label) pairs."""

    unit = "samples"

    def __init__(self, train_set, val_set, *, seed: int, fraction: float = 1.0):
        self.train_set, self.val_set = train_set, val_set
        self.order = SampleOrder(len(train_set), seed, fraction)

    @property
    def num_train_samples(self) -> int:
        return len(self.order)

    @staticmethod
    def _gather(dataset, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = getattr(dataset, "tensors", None)
        if tensors is not None and len(tensors) == 2:  # TensorDataset: index once, no Python loop
            idx = torch.from_numpy(index)
            return tensors[0][idx], tensors[1][idx]
        items = [dataset[int(i)] for i in index]
        return torch.stack([torch.as_tensor(x) for x, _ in items]), torch.as_tensor([int(y) for _, y in items])

    def train_batch(self, position: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._gather(self.train_set, self.order.take(position, batch_size))

    def units(self, x: torch.Tensor) -> int:
        return x.shape[0]

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, batches: int, batch_size: int, device: torch.device,
                 autocast: AbstractContextManager) -> dict[str, float]:
        # The validation split of a classifier is small: always judge on all of it.
        total = correct = 0
        nll = 0.0
        index = np.arange(len(self.val_set))
        for start in range(0, len(index), max(batch_size, 256)):
            x, y = self._gather(self.val_set, index[start : start + max(batch_size, 256)])
            x, y = x.to(device), y.to(device)
            with autocast:
                logits = model(x)
            nll += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
            total += y.numel()
        return {"val_loss": nll / total, "val_accuracy": correct / total}
