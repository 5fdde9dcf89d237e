"""Optimizers (registry), parameter groups and lr schedules.

The names below load on first use (PEP 562): the registry and the config sections are read
without torch (the config validates `optim.*` before torch is imported); the rest imports it.
`param_groups` is imported from its module (`scaletrain.optim.param_groups`), which has its name.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "OPTIMIZERS": "registry", "available": "registry", "build_from_config": "registry",
    "build_optimizer": "registry", "register": "registry",
    "state_bytes": "memory", "state_bytes_per_param": "memory",
    "Lamb": "lamb", "Lars": "lars", "Lion": "lion", "MuonAdamW": "muon",
    "SCHEDULES": "schedules", "apply_lr": "schedules", "constant": "schedules", "cosine": "schedules",
    "effective_lr": "schedules", "inverse_sqrt": "schedules", "linear": "schedules",
    "lr_multiplier": "schedules", "scale_lr": "schedules", "wsd": "schedules",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
