"""The structure of a low-rank factorized model (`scaletrain compress --method lowrank`).

A factorized Linear becomes nn.Sequential(Linear(in, r), Linear(r, out)), so its weights are named
`NAME.0.weight` / `NAME.1.weight`; model_config.json records {"factorized": {NAME: r}} and
`factorize_skeleton` rebuilds that structure before the weights are loaded. How the factors are
computed (truncated SVD) lives in scaletrain.compress.lowrank.
"""
from __future__ import annotations

from torch import nn


def split_linear(linear: nn.Linear, r: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(linear.in_features, r, bias=False),
                         nn.Linear(r, linear.out_features, bias=linear.bias is not None))


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def factorize_skeleton(model: nn.Module, ranks: dict[str, int]) -> nn.Module:
    """Give `model` (in place) the factorized structure recorded in model_config.json."""
    for name, r in ranks.items():
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"factorized layer {name!r} is not a Linear in this model")
        set_submodule(model, name, split_linear(linear, int(r)))
    return model


def densify(model: nn.Module, ranks: dict[str, int]) -> nn.Module:
    """Undo the structure (in place): each factor pair becomes one Linear holding their product,
    the same function up to rounding (for formats with no factorized layers, e.g. transformers')."""
    import torch

    with torch.no_grad():
        for name in ranks:
            pair = model.get_submodule(name)
            first, second = pair[0], pair[1]
            dense = nn.Linear(first.in_features, second.out_features, bias=second.bias is not None)
            dense.weight.copy_(second.weight.double() @ first.weight.double())
            if second.bias is not None:
                dense.bias.copy_(second.bias)
            set_submodule(model, name, dense)
    return model
