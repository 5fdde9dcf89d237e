"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2).

    c  = b1 m + (1 - b1) g
    w <- w - lr * (sign(c) + wd * w)
    m <- b2 m + (1 - b2) g

Only the sign of an interpolated momentum: every coordinate moves by exactly lr, so Lion wants an
lr 3-10x smaller than AdamW's and a weight decay 3-10x larger (same lr * wd). One state tensor
(half of Adam's memory).
"""
from __future__ import annotations

import torch

from scaletrain.optim._common import gather


class Lion(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0):
        if lr < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid Lion hyperparameters lr={lr} betas={betas} wd={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, steps, (m,) = gather(self, group, ("exp_avg",))
            if not params:
                continue
            b1, b2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            torch._foreach_add_(steps, 1.0)
            if wd:
                torch._foreach_mul_(params, 1.0 - lr * wd)  # decoupled, as in the paper's code
            c = torch._foreach_lerp(m, grads, 1.0 - b1)
            torch._foreach_sign_(c)
            torch._foreach_add_(params, c, alpha=-lr)
            torch._foreach_lerp_(m, grads, 1.0 - b2)
        return loss


def build(groups, *, lr, weight_decay, options, **_):
    return Lion(groups, lr=lr, betas=tuple(options.betas), weight_decay=weight_decay)
