"""What our own optimizers share: gathering a group's tensors and the trust ratio of LAMB/LARS."""
from __future__ import annotations

import torch


def gather(opt: torch.optim.Optimizer, group: dict, buffers: tuple[str, ...]):
    """(params, grads, step tensors, [list per buffer]) of the group's parameters that have a
    gradient, creating zero state on first use. The step is a float32 tensor like torch.optim's, so
    checkpoints hold tensors only."""
    params, grads, steps = [], [], []
    bufs: list[list[torch.Tensor]] = [[] for _ in buffers]
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError(f"{type(opt).__name__} does not support sparse gradients")
        state = opt.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            for name in buffers:
                state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
        params.append(p)
        grads.append(p.grad)
        steps.append(state["step"])
        for i, name in enumerate(buffers):
            bufs[i].append(state[name])
    return params, grads, steps, bufs


def trust_ratios(weight_norms, update_norms, coefficient: float = 1.0, eps: float = 0.0,
                 max_ratio: float | None = None) -> list[torch.Tensor]:
    """coefficient * ||w|| / (||u|| + eps) per tensor; 1 where either norm is zero (a fresh zero
    bias, or no update): the layer then takes the unscaled step, as in both papers' reference code.
    Tensors, not floats: no host sync per parameter."""
    ratios = []
    for wn, un in zip(weight_norms, update_norms):
        r = coefficient * wn / (un + eps)
        if max_ratio is not None:
            r = r.clamp(max=max_ratio)
        ratios.append(torch.where((wn > 0) & (un > 0), r, torch.ones_like(r)))
    return ratios
