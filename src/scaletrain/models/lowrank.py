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
