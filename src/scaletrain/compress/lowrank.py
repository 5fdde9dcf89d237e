"""Low-rank factorization of Linear layers by truncated SVD.

W (out x in) = U S Vᵀ; keeping the r largest singular values gives W ≈ (U_r S_r)(V_rᵀ), two
Linears in x r and r x out. r is the smallest rank whose singular values keep `energy` of
Σ s² (the squared Frobenius norm); a layer is factorized only when r·(in + out) < in·out, i.e.
when it gets smaller. A factorized layer becomes nn.Sequential(Linear(in, r), Linear(r, out)),
so its weights are named `NAME.0.weight` / `NAME.1.weight`; model_config.json records
{"factorized": {NAME: r}} and `factorize_skeleton` rebuilds that structure before loading.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from scaletrain.models.lowrank import factorize_skeleton, set_submodule, split_linear  # noqa: F401


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    cumulative = (s.double() ** 2).cumsum(0) / (s.double() ** 2).sum()
    return int((cumulative < energy).sum()) + 1 if energy < 1.0 else s.numel()


def _candidates(model: nn.Module) -> dict[str, nn.Linear]:
    head = getattr(model, "lm_head", None)  # tied to the embedding: keep it whole
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head}


@torch.no_grad()
def factorize(model: nn.Module, energy: float) -> tuple[nn.Module, dict[str, int]]:
    """(a factorized copy, {layer: rank}) keeping `energy` (0 < energy <= 1) of each layer's spectrum."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    out = copy.deepcopy(model)
    ranks = {}
    for name, linear in _candidates(out).items():
        U, S, Vh = torch.linalg.svd(linear.weight.double(), full_matrices=False)
        r = rank_for_energy(S, energy)
        if r * (linear.in_features + linear.out_features) >= linear.in_features * linear.out_features:
            continue
        pair = split_linear(linear, r)
        root = S[:r].sqrt()  # split S evenly so both factors have the same scale
        pair[0].weight.copy_((root[:, None] * Vh[:r]).float())
        pair[1].weight.copy_((U[:, :r] * root[None, :]).float())
        if linear.bias is not None:
            pair[1].bias.copy_(linear.bias)
        set_submodule(out, name, pair)
        ranks[name] = r
    return out.eval(), ranks
