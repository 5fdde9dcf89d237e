"""LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning", Algorithm 2).

    m_t = b1 m + (1 - b1) g            v_t = b2 v + (1 - b2) g^2
    r_t = m_hat / (sqrt(v_hat) + eps)  (m_hat, v_hat bias-corrected)
    u_t = r_t + wd * w
    w  <- w - lr * (||w|| / ||u_t||) * u_t        per parameter tensor ("layer")

The layer-wise trust ratio keeps each layer's step proportional to its weight norm, which is what
lets Adam-style updates survive batches of 32k+ (BERT in 76 minutes). A ratio is 1 where either
norm is zero (e.g. a zero-initialised bias), as in the reference implementation.
"""
from __future__ import annotations

import torch

from scaletrain.optim._common import gather, trust_ratios


class Lamb(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, bias_correction: bool = True, max_trust_ratio: float | None = None):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid LAMB hyperparameters lr={lr} betas={betas} eps={eps} wd={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      bias_correction=bias_correction, max_trust_ratio=max_trust_ratio))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, steps, (m, v) = gather(self, group, ("exp_avg", "exp_avg_sq"))
            if not params:
                continue
            b1, b2 = group["betas"]
            torch._foreach_add_(steps, 1.0)
            torch._foreach_lerp_(m, grads, 1.0 - b1)
            torch._foreach_mul_(v, b2)
            torch._foreach_addcmul_(v, grads, grads, value=1.0 - b2)
            denom = torch._foreach_sqrt(v)
            if group["bias_correction"]:
                # Per tensor and as tensors (no host sync): a parameter that joined late has its own t.
                torch._foreach_div_(denom, [torch.sqrt(1.0 - torch.pow(b2, t)) for t in steps])
            torch._foreach_add_(denom, group["eps"])
            update = torch._foreach_div(m, denom)
            if group["bias_correction"]:
                torch._foreach_div_(update, [1.0 - torch.pow(b1, t) for t in steps])
            if group["weight_decay"]:
                torch._foreach_add_(update, params, alpha=group["weight_decay"])
            ratios = trust_ratios(torch._foreach_norm(params), torch._foreach_norm(update),
                                  max_ratio=group["max_trust_ratio"])
            torch._foreach_mul_(update, ratios)
            torch._foreach_add_(params, update, alpha=-group["lr"])
        return loss


def build(groups, *, lr, weight_decay, betas, eps, options, **_):
    return Lamb(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                bias_correction=options.bias_correction, max_trust_ratio=options.max_trust_ratio)
