"""Optimizer registry: name -> factory(groups, **hyperparameters) -> torch.optim.Optimizer.

The classic family lives here (all on torch.optim); the large-scale ones register themselves from
their own modules (lamb.py, lars.py, lion.py, muon.py, adamw8bit.py), imported by the package.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from scaletrain.errors import UserError

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {}


def register(name: str):
    """Decorator: `@register("lion") def _lion(groups, *, lr, weight_decay, betas, eps, momentum,
    nesterov, fused, options, names, roles): ...`. Factories receive every hyperparameter and use
    what they need; `options` is the optimizer's `optim.<name>` config section (its defaults when
    built outside a config); `names` / `roles` the parameter names / roles of each group, from
    param_groups (None for plain groups)."""
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


def options_of(name: str, options: Any):
    """The `optim.<name>` section: the one given, else the config's defaults for it."""
    if options is not None:
        return options
    from scaletrain.config.schema import OptimConfig

    return getattr(OptimConfig(), name, None)


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
    options: Any = None,
) -> torch.optim.Optimizer:
    """Build optimizer `name` over `groups` (from param_groups, or plain dicts with "params").

    Each group gets lr = lr * lr_mult and base_lr = the same value (schedules.apply_lr
    scales base_lr); groups without weight_decay get `weight_decay`. `options` is the optimizer's
    own config section (e.g. `cfg.optim.lion`); None takes its defaults."""
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optim.name {name!r}; known: {available()}")
    if lr <= 0:
        raise UserError(f"optim.lr must be > 0, got {lr!r}")
    prepared, names, roles = [], [], []
    for g in groups:
        g = dict(g)
        # Parameter names (from param_groups) are for factories that place parameters by role
        # (muon); they stay out of the optimizer's groups so checkpoints keep their layout.
        names.append(g.pop("param_names", None))
        roles.append(g.pop("param_roles", None))
        g["params"] = list(g["params"])
        g.setdefault("lr_mult", 1.0)
        g.setdefault("weight_decay", weight_decay)
        g["lr"] = g["base_lr"] = lr * g["lr_mult"]
        prepared.append(g)
    return OPTIMIZERS[name](
        prepared, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps,
        momentum=momentum, nesterov=nesterov, fused=fused, options=options_of(name, options),
        names=None if any(n is None for n in names) else names,
        roles=None if any(r is None for r in roles) else roles,
    )


def build_from_config(model: torch.nn.Module, optim_cfg, global_batch: int | None = None) -> torch.optim.Optimizer:
    """The optimizer a config asks for, over `model`'s parameter groups: what the trainer calls.
    With `global_batch`, optim.lr is rescaled by optim.lr_scaling (schedules.effective_lr)."""
    from scaletrain.optim.param_groups import param_groups
    from scaletrain.optim.schedules import effective_lr

    o = optim_cfg
    lr = effective_lr(o, global_batch) if global_batch is not None else o.lr
    groups = param_groups(model, o.weight_decay, o.lr_multipliers)
    return build_optimizer(o.name, groups, lr=lr, weight_decay=o.weight_decay, betas=tuple(o.betas),
                           eps=o.eps, momentum=o.momentum, fused=o.fused,
                           options=getattr(o, o.name, None))


# ---- the classic family, on torch.optim ---------------------------------------------------------


@register("gd")
def _gd(groups, *, lr, weight_decay, **_):
    # Full-batch gradient descent: the update is plain SGD; what makes it GD is the gradient, which
    # the trainer averages over the whole training set before each step (optim.name == "gd").
    return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=0.0)


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


@register("adagrad")
def _adagrad(groups, *, lr, weight_decay, eps, fused, options, **_):
    # Adagrad's fused kernel is CPU-only in torch; foreach is the portable default.
    return torch.optim.Adagrad(groups, lr=lr, weight_decay=weight_decay, eps=eps,
                               lr_decay=options.lr_decay,
                               initial_accumulator_value=options.initial_accumulator_value,
                               fused=fused or None)


@register("rmsprop")
def _rmsprop(groups, *, lr, weight_decay, eps, options, **_):
    return torch.optim.RMSprop(groups, lr=lr, weight_decay=weight_decay, eps=eps, alpha=options.alpha,
                               centered=options.centered, momentum=options.momentum)


@register("adafactor")
def _adafactor(groups, *, lr, weight_decay, options, **_):
    # torch's Adafactor (Shazeer & Stern 2018, no first moment): factored second moment for
    # matrices, relative step size lr * max(eps2, RMS(w)); its weight decay is decoupled.
    return torch.optim.Adafactor(groups, lr=lr, weight_decay=weight_decay, beta2_decay=options.beta2_decay,
                                 eps=(options.eps1, options.eps2), d=options.d)
