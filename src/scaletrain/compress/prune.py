"""Global magnitude pruning (unstructured): zero the smallest weights across all prunable layers.

Prunable: the weight matrices of nn.Linear layers, except a GPT's LM head (tied to the embedding,
which is a lookup table, not a matmul we would sparsify). The model keeps its shapes (a dense
kernel gets no faster); the zeros are what a sparse format or kernel would exploit.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def prunable(model: nn.Module) -> dict[str, nn.Linear]:
    head = getattr(model, "lm_head", None)
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head}


def magnitude_prune(model: nn.Module, amount: float) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """(a pruned copy, {layer: keep-mask}): the `amount` fraction of prunable weights with the
    smallest |w|, chosen over all layers at once (layers with small weights lose more)."""
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be in [0, 1), got {amount}")
    pruned = copy.deepcopy(model)
    layers = prunable(pruned)
    magnitudes = torch.cat([m.weight.detach().abs().flatten() for m in layers.values()])
    k = int(amount * magnitudes.numel())
    masks = {}
    # kthvalue ties: everything <= the k-th smallest goes, so exactly k when magnitudes are distinct.
    threshold = magnitudes.kthvalue(k).values if k > 0 else magnitudes.new_tensor(-1.0)
    with torch.no_grad():
        for name, m in layers.items():
            masks[name] = (m.weight.abs() > threshold).to(m.weight.dtype)
            m.weight.mul_(masks[name])
    return pruned, masks


class KeepPruned:
    """Keeps pruned weights at zero while the model is fine-tuned: a forward pre-hook re-applies
    each mask, so every forward (and the gradient it produces) sees the pruned model whatever the
    optimizer did to the zeroed entries. `close()` applies the masks a last time and removes the hooks."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]):
        self.layers = {name: m for name, m in model.named_modules() if name in masks}
        self.masks = masks
        self.handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in self.layers.items()]

    def _hook(self, name: str):
        def apply(module, args):
            mask = self.masks[name]
            if mask.device != module.weight.device:  # the model went to the fine-tuning device and back
                mask = self.masks[name] = mask.to(module.weight.device)
            with torch.no_grad():
                module.weight.mul_(mask)
        return apply

    def close(self) -> None:
        for name, m in self.layers.items():
            self._hook(name)(m, ())
        for h in self.handles:
            h.remove()


def sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros among the prunable weights."""
    ws = [m.weight.detach() for m in prunable(model).values()]
    return float(sum(int((w == 0).sum()) for w in ws) / max(sum(w.numel() for w in ws), 1))
