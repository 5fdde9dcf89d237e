"""The classic optimizers, on torch.optim: each a factory(groups, **hyperparameters) that the
registry (registry.py) declares and calls."""
from __future__ import annotations

import torch


def can_fuse(groups: list[dict]) -> bool:
    """Whether torch's fused kernels take these parameters (floating point, on CPU or CUDA)."""
    return all(
        p.device.type in ("cpu", "cuda") and p.is_floating_point()
        for g in groups for p in g["params"]
    )


def gd(groups, *, lr, weight_decay, **_):
    # Full-batch gradient descent: the update is plain SGD; what makes it GD is the gradient, which
    # the trainer averages over the whole training set before each step (optim.name == "gd").
    return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=0.0)


def adamw(groups, *, lr, weight_decay, betas, eps, fused, **_):
    # Fused is a single kernel per step (CPU too, since torch 2.4), ~5x faster than foreach.
    use_fused = can_fuse(groups) if fused is None else fused
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps,
                             fused=use_fused or None)


def adam(groups, *, lr, weight_decay, betas, eps, fused, **_):
    # torch Adam's weight_decay is coupled L2 (added to the gradient), unlike AdamW. Fused for the
    # same reason as AdamW: the default CPU path is a Python loop over every tensor.
    use_fused = can_fuse(groups) if fused is None else fused
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps,
                            fused=use_fused or None)


def sgd(groups, *, lr, weight_decay, **_):
    return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=0.0)


def momentum(groups, *, lr, weight_decay, momentum, nesterov, **_):
    return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov)


def nesterov(groups, *, lr, weight_decay, momentum, **_):
    return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=True)


def adagrad(groups, *, lr, weight_decay, eps, fused, options, **_):
    # Adagrad's fused kernel is CPU-only in torch; foreach is the portable default.
    return torch.optim.Adagrad(groups, lr=lr, weight_decay=weight_decay, eps=eps,
                               lr_decay=options.lr_decay,
                               initial_accumulator_value=options.initial_accumulator_value,
                               fused=fused or None)


def rmsprop(groups, *, lr, weight_decay, eps, options, **_):
    return torch.optim.RMSprop(groups, lr=lr, weight_decay=weight_decay, eps=eps, alpha=options.alpha,
                               centered=options.centered, momentum=options.momentum)


def adafactor(groups, *, lr, weight_decay, options, **_):
    # torch's Adafactor (Shazeer & Stern 2018, no first moment): factored second moment for
    # matrices, relative step size lr * max(eps2, RMS(w)); its weight decay is decoupled.
    return torch.optim.Adafactor(groups, lr=lr, weight_decay=weight_decay, beta2_decay=options.beta2_decay,
                                 eps=(options.eps1, options.eps2), d=options.d)
