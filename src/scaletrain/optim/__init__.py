"""Optimizers (registry), parameter groups and lr schedules."""
from scaletrain.optim.param_groups import param_groups
from scaletrain.optim.registry import OPTIMIZERS, available, build_optimizer, register
from scaletrain.optim.schedules import (
    SCHEDULES, apply_lr, constant, cosine, inverse_sqrt, linear, lr_multiplier, scale_lr, wsd,
)

__all__ = [
    "OPTIMIZERS", "SCHEDULES", "apply_lr", "available", "build_optimizer", "constant", "cosine",
    "inverse_sqrt", "linear", "lr_multiplier", "param_groups", "register", "scale_lr", "wsd",
]
