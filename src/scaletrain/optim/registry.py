"""Optimizer registry: name -> factory(groups, **hyperparameters) -> torch.optim.Optimizer."""
from __future__ import annotations

from typing import Callable

import torch

from scaletrain.errors import UserError

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {}


def register(name: str):
    """Decorator: `@register("lion") def _lion(groups, *, lr, weight_decay, betas, eps, momentum,
    nesterov, fused): ...`. Factories receive every hyperparameter and use what they need."""
    def deco(fn):
        if name in OPTIMIZERS:
            raise ValueError(f"optimizer {name!r} registered twice")
        OPTIMIZERS[name] = fn
        return fn
    return deco


def available() -> list[str]:
    return sorted(OPTIMIZERS)


def _can_fuse(groups: list[dict]) -> bool:
    return all(
        p.device.type in ("cpu", "cuda") and p.is_floating_point()
        for g in groups for p in g["params"]
    )


def build_optimizer(
    name: str,
    groups: list[dict],
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    momentum: float = 0.9,
    nesterov: bool = False,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """Build optimizer `name` over `groups` (from param_groups, or plain dicts with "params").

    Each group gets lr = lr * lr_mult and base_lr = the same value (schedules.apply_lr
    scales base_lr); groups without weight_decay get `weight_decay`."""
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optim.name {name!r}; known: {available()}")
    if lr <= 0:
        raise UserError(f"optim.lr must be > 0, got {lr!r}")
    prepared = []
    for g in groups:
        g = dict(g)
        g["params"] = list(g["params"])
        g.setdefault("lr_mult", 1.0)
        g.setdefault("weight_decay", weight_decay)
        g["lr"] = g["base_lr"] = lr * g["lr_mult"]
        prepared.append(g)
    return OPTIMIZERS[name](
        prepared, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps,
        momentum=momentum, nesterov=nesterov, fused=fused,
    )


@register("adamw")
def _adamw(groups, *, lr, weight_decay, betas, eps, fused, **_):
    # Fused is a single kernel per step (CPU too, since torch 2.4), ~5x faster than foreach.
    use_fused = _can_fuse(groups) if fused is None else fused
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps,
                             fused=use_fused or None)


@register("adam")
def _adam(groups, *, lr, weight_decay, betas, eps, fused, **_):
    # torch Adam's weight_decay is coupled L2 (added to the gradient), unlike AdamW. Fused for the
    # same reason as AdamW: the default CPU path is a Python loop over every tensor.
    use_fused = _can_fuse(groups) if fused is None else fused
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps,
                            fused=use_fused or None)


@register("sgd")
def _sgd(groups, *, lr, weight_decay, **_):
    return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=0.0)


@register("momentum")
def _momentum(groups, *, lr, weight_decay, momentum, nesterov, **_):
    return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov)


@register("nesterov")
def _nesterov(groups, *, lr, weight_decay, momentum, **_):
    return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=True)
