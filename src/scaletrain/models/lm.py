"""What every causal language model family shares, whatever its blocks: the mask of packed
documents and sampling. Plain functions of tensors and a model, free of parallelism."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["document_mask", "sample"]


def document_mask(doc_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(bool [B, 1, T, T] block-diagonal causal mask, [B, T] position of each token in its document)
    for packed documents: a token attends to earlier tokens of its own document only."""
    B, T = doc_ids.shape
    ar = torch.arange(T, device=doc_ids.device)
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    mask = (same & (ar[None, :] <= ar[:, None])).unsqueeze(1)
    # Documents are contiguous runs: a run starts where the id changes; the position counts from it.
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(starts, ar, torch.zeros_like(ar)).cummax(dim=1).values
    return mask, ar - first


@torch.no_grad()
def sample(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, *, context: int, temperature: float = 1.0,
           top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Autoregressive sampling from `model` (token ids [B, T] -> logits [B, T, V]) within the last
    `context` tokens, without a KV cache (fine for demos and evals on small models). temperature 0:
    greedy argmax. Runs in eval mode (no dropout) and restores the mode."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            logits = model(idx[:, -context:])[:, -1, :].float()
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat((idx, nxt.to(idx.dtype)), dim=1)
    finally:
        model.train(was_training)
    return idx
