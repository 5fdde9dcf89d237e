"""Optimizer memory measured from the state tensors themselves (not from a formula)."""
from __future__ import annotations

import torch


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's state tensors. A tensor shared by several parameters (e.g.
    bitsandbytes' quantization maps) is counted once; 0-d step counters count too."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for state in optimizer.state.values():
        for t in _tensors(state):
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            if key in seen:
                continue
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def state_bytes_per_param(optimizer: torch.optim.Optimizer) -> float:
    """state_bytes over the number of parameters the optimizer updates (after one step: states
    are created lazily)."""
    n = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    return state_bytes(optimizer) / max(1, n)
