"""Learning-rate schedules as pure functions: step -> multiplier of the base lr.

No state, so resuming from a checkpoint needs only the step. Warmup is linear with
(step + 1) / warmup, so step 0 trains at a small non-zero lr and step warmup-1 reaches 1.0.
After `total` every schedule holds its final value.
"""
from __future__ import annotations

import math
from typing import Callable

from scaletrain.errors import UserError


def _warmup(step: int, warmup: int) -> float | None:
    if warmup < 0:
        raise UserError(f"schedule.warmup must be >= 0, got {warmup}")
    return (step + 1) / warmup if step < warmup else None


def _progress(step: int, start: int, total: int) -> float:
    """Fraction of [start, total] elapsed, clamped to [0, 1]."""
    return min(1.0, max(0.0, (step - start) / max(1, total - start)))


def _check_ratio(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise UserError(f"schedule.{key} must be in [0, 1], got {value}")


def constant(step: int, *, warmup: int = 0) -> float:
    w = _warmup(step, warmup)
    return 1.0 if w is None else w


def cosine(step: int, *, total: int, warmup: int = 0, min_ratio: float = 0.1) -> float:
    _check_ratio("min_ratio", min_ratio)
    w = _warmup(step, warmup)
    if w is not None:
        return w
    p = _progress(step, warmup, total)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


def linear(step: int, *, total: int, warmup: int = 0, min_ratio: float = 0.0) -> float:
    _check_ratio("min_ratio", min_ratio)
    w = _warmup(step, warmup)
    if w is not None:
        return w
    return min_ratio + (1.0 - min_ratio) * (1.0 - _progress(step, warmup, total))


def wsd(step: int, *, total: int, warmup: int = 0, decay_fraction: float = 0.2,
        min_ratio: float = 0.0, cooldown: str = "linear") -> float:
    """Warmup-stable-decay: 1.0 until the last `decay_fraction` of `total` steps, then a
    cooldown to min_ratio. "1-sqrt" (Hägele et al. 2024) keeps the lr higher early in the
    cooldown and drops fast at the end: f = 1 - sqrt(progress)."""
    _check_ratio("min_ratio", min_ratio)
    _check_ratio("decay_fraction", decay_fraction)
    if cooldown not in ("linear", "1-sqrt"):
        raise UserError(f"schedule.cooldown must be 'linear' or '1-sqrt', got {cooldown!r}")
    w = _warmup(step, warmup)
    if w is not None:
        return w
    decay_start = max(warmup, total - round(decay_fraction * total))
    if step < decay_start:
        return 1.0
    p = _progress(step, decay_start, total)
    f = 1.0 - p if cooldown == "linear" else 1.0 - math.sqrt(p)
    return min_ratio + (1.0 - min_ratio) * f


def inverse_sqrt(step: int, *, warmup: int) -> float:
    """Linear warmup then sqrt(warmup / (step + 1)): continuous (1.0 at step warmup-1)."""
    w = _warmup(step, warmup)
    if w is not None:
        return w
    return math.sqrt(max(1, warmup) / (step + 1))


SCHEDULES: dict[str, Callable[..., float]] = {
    "constant": constant, "cosine": cosine, "linear": linear, "wsd": wsd, "inverse_sqrt": inverse_sqrt,
}


def lr_multiplier(name: str, step: int, total: int, warmup: int, min_ratio: float,
                  decay_fraction: float, cooldown: str) -> float:
    """Dispatch by name, passing each schedule only the arguments it takes."""
    if name == "constant":
        return constant(step, warmup=warmup)
    if name == "inverse_sqrt":
        return inverse_sqrt(step, warmup=warmup)
    if name in ("cosine", "linear"):
        return SCHEDULES[name](step, total=total, warmup=warmup, min_ratio=min_ratio)
    if name == "wsd":
        return wsd(step, total=total, warmup=warmup, decay_fraction=decay_fraction,
                   min_ratio=min_ratio, cooldown=cooldown)
    raise UserError(f"unknown schedule.name {name!r}; known: {sorted(SCHEDULES)}")


def scale_lr(lr: float, base_batch: int, new_batch: int, rule: str = "linear") -> float:
    """Rescale a tuned lr to a new global batch: "linear" (SGD, Goyal et al.), "sqrt"
    (Adam-family heuristic), or "none"."""
    if base_batch <= 0 or new_batch <= 0:
        raise UserError(f"batch sizes must be > 0, got base_batch={base_batch}, new_batch={new_batch}")
    if rule == "linear":
        return lr * new_batch / base_batch
    if rule == "sqrt":
        return lr * math.sqrt(new_batch / base_batch)
    if rule == "none":
        return lr
    raise UserError(f"lr scaling rule must be 'linear', 'sqrt' or 'none', got {rule!r}")


def apply_lr(optimizer, multiplier: float) -> None:
    """Set every group's lr to base_lr * multiplier. Groups from build_optimizer carry
    base_lr; for any other optimizer the lr found on first call is taken as the base."""
    for g in optimizer.param_groups:
        g["lr"] = g.setdefault("base_lr", g["lr"]) * multiplier


def effective_lr(optim_cfg, global_batch: int) -> float:
    """optim.lr rescaled for a run whose global batch (micro-batch x grad_accum x data-parallel
    ranks) differs from optim.reference_batch, by optim.lr_scaling. The trainer calls this once
    and builds the optimizer with the result; schedules then multiply it as usual."""
    if optim_cfg.lr_scaling == "none":
        return optim_cfg.lr
    if optim_cfg.reference_batch is None:
        raise UserError(f"optim.reference_batch is required with optim.lr_scaling={optim_cfg.lr_scaling}")
    return scale_lr(optim_cfg.lr, optim_cfg.reference_batch, global_batch, optim_cfg.lr_scaling)
