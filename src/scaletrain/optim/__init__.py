"""Optimizers (registry), parameter groups and lr schedules."""
from scaletrain.optim.param_groups import param_groups
from scaletrain.optim.registry import OPTIMIZERS, available, build_from_config, build_optimizer, register
# The large-scale optimizers register themselves on import.
from scaletrain.optim import adamw8bit, lamb, lars, lion, muon  # noqa: F401  (registration)
from scaletrain.optim.lamb import Lamb
from scaletrain.optim.lars import Lars
from scaletrain.optim.lion import Lion
from scaletrain.optim.memory import state_bytes, state_bytes_per_param
from scaletrain.optim.muon import MuonAdamW
from scaletrain.optim.schedules import (
    SCHEDULES, apply_lr, constant, cosine, effective_lr, inverse_sqrt, linear, lr_multiplier, scale_lr, wsd,
)

__all__ = [
    "Lamb", "Lars", "Lion", "MuonAdamW", "OPTIMIZERS", "SCHEDULES", "apply_lr", "available",
    "build_from_config", "build_optimizer", "constant", "cosine", "effective_lr", "inverse_sqrt", "linear",
    "lr_multiplier", "param_groups", "register", "scale_lr", "state_bytes", "state_bytes_per_param", "wsd",
]
