"""LARS (You, Gitman & Ginsburg 2017, "Large Batch Training of Convolutional Networks", Algorithm 1).

    local_lr = eta * ||w|| / (||g|| + wd * ||w|| + eps)        per parameter tensor ("layer")
    v <- m v + lr * local_lr * (g + wd * w)
    w <- w - v

SGD with momentum whose step per layer is proportional to the layer's weight norm: the cure for
layers whose ||g|| / ||w|| ratio differs by orders of magnitude, which breaks plain SGD at batch
8k+ (ResNet-50 at 32k). As in the paper (and the MLPerf reference), the global lr sits inside the
momentum buffer. A group with `adapt: False` takes plain momentum steps: the factory sets it on
param_groups' no-decay groups (biases, norms, embeddings; the usual practice, their norms are tiny
or zero) unless `optim.lars.adapt_no_decay`, whatever the weight decay value (it may be 0).
"""
from __future__ import annotations

import torch

from scaletrain.optim._common import gather, trust_ratios


class Lars(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 0.0, adapt: bool = True):
        if lr < 0 or not 0.0 <= momentum < 1.0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(f"invalid LARS hyperparameters lr={lr} momentum={momentum} wd={weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, eps=eps,
                                      adapt=adapt))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, steps, (bufs,) = gather(self, group, ("momentum_buffer",))
            if not params:
                continue
            wd = group["weight_decay"]
            torch._foreach_add_(steps, 1.0)
            update = torch._foreach_add(grads, params, alpha=wd) if wd else [g.clone() for g in grads]
            if group["adapt"]:
                w_norms = torch._foreach_norm(params)
                g_norms = torch._foreach_norm(grads)
                # ||g|| + wd ||w|| (the paper's denominator), not ||g + wd w||.
                denom = torch._foreach_add(g_norms, w_norms, alpha=wd) if wd else g_norms
                ratios = trust_ratios(w_norms, denom, coefficient=group["trust_coefficient"], eps=group["eps"])
                torch._foreach_mul_(update, ratios)
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, update, alpha=group["lr"])
            torch._foreach_sub_(params, bufs)
        return loss


def build(groups, *, lr, weight_decay, momentum, options, **_):
    for g in groups:
        g.setdefault("adapt", options.adapt_no_decay or not str(g.get("name", "")).endswith("no_decay"))
    return Lars(groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                trust_coefficient=options.trust_coefficient, eps=options.eps)
