"""Structured pruning: physically remove MLP hidden units and attention heads.

Importance of a unit (or head) is the product of the L2 norms of the weights that write it and the
weights that read it (the rows of the layer before, the columns of the layer after): a unit whose
input or output is tiny contributes little. Each layer keeps the same fraction, at least one.
The pruned model is a new, smaller model of the same class (an MLP with narrower `hidden`, a GPT
with per-block `layer_heads` / `layer_d_ff`) built from its args, so it loads back from
safetensors through model_config.json.
"""
from __future__ import annotations

import torch
from torch import nn

from scaletrain.models.gpt.model import GPT
from scaletrain.models.mlp.model import MLP


def _keep(scores: torch.Tensor, amount: float) -> torch.Tensor:
    n = scores.numel()
    k = max(1, round(n * (1.0 - amount)))
    return scores.topk(k).indices.sort().values


def _copy(dst: nn.Linear, src: nn.Linear, rows=None, cols=None) -> None:
    w = src.weight.detach()
    w = w if rows is None else w[rows]
    w = w if cols is None else w[:, cols]
    dst.weight.data.copy_(w)
    if src.bias is not None:
        dst.bias.data.copy_(src.bias.detach() if rows is None else src.bias.detach()[rows])


@torch.no_grad()
def prune_mlp(model: MLP, amount: float) -> MLP:
    linears = model._linears()
    keeps = []
    for i in range(len(linears) - 1):
        score = linears[i].weight.norm(dim=1) * linears[i + 1].weight.norm(dim=0)
        keeps.append(_keep(score, amount))
    args = {**model.args_dict(), "hidden": [len(k) for k in keeps]}
    small = MLP.from_args_dict(args)
    for i, (dst, src) in enumerate(zip(small._linears(), linears)):
        _copy(dst, src, rows=keeps[i] if i < len(keeps) else None, cols=keeps[i - 1] if i > 0 else None)
    return small.eval()


@torch.no_grad()
def prune_gpt(model: GPT, amount: float, head_amount: float | None = None) -> GPT:
    a = model.args
    hd = a.d_model // a.n_head
    head_amount = amount if head_amount is None else head_amount
    head_keeps, unit_keeps = [], []
    for block in model.blocks:
        qkv, proj = block.attn.qkv.weight, block.attn.proj.weight
        n_heads = qkv.shape[0] // (3 * hd)
        # qkv rows are laid out head by head ([h0: q k v][h1: q k v]...); proj reads head h from
        # its input columns h*hd .. (h+1)*hd.
        score = qkv.view(n_heads, 3 * hd, -1).flatten(1).norm(dim=1) * proj.view(-1, n_heads, hd).transpose(0, 1).flatten(1).norm(dim=1)
        head_keeps.append(_keep(score, head_amount))
        fc, out = block.mlp.fc.weight, block.mlp.proj.weight
        unit_keeps.append(_keep(fc.norm(dim=1) * out.norm(dim=0), amount))
    args = {**model.args_dict(), "layer_heads": [len(k) for k in head_keeps],
            "layer_d_ff": [len(k) for k in unit_keeps]}
    small = GPT.from_args_dict(args)
    # Everything outside the pruned layers (embeddings, norms) is copied as is.
    small_sd = small.state_dict()
    src_sd = model.state_dict()
    for name in small_sd:
        if small_sd[name].shape == src_sd[name].shape:
            small_sd[name].copy_(src_sd[name])
    for block, src, heads, units in zip(small.blocks, model.blocks, head_keeps, unit_keeps):
        rows = (heads[:, None] * 3 * hd + torch.arange(3 * hd)).flatten()
        cols = (heads[:, None] * hd + torch.arange(hd)).flatten()
        _copy(block.attn.qkv, src.attn.qkv, rows=rows)
        _copy(block.attn.proj, src.attn.proj, cols=cols)
        _copy(block.mlp.fc, src.mlp.fc, rows=units)
        _copy(block.mlp.proj, src.mlp.proj, cols=units)
    return small.eval()


def prune_structured(model: nn.Module, amount: float, head_amount: float | None = None) -> nn.Module:
    """A smaller model without the `amount` least important MLP units per layer (and, for a
    GPT, `head_amount` (default: amount) of the heads per block)."""
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be in [0, 1), got {amount}")
    if isinstance(model, GPT):
        return prune_gpt(model, amount, head_amount)
    if isinstance(model, MLP):
        return prune_mlp(model, amount)
    raise TypeError(f"structured pruning knows GPT and MLP, not {type(model).__name__}")
