"""How the core may split a `transformers` model: its decoder layers, found from the
`_no_split_modules` its classes declare (the units `transformers` itself never splits, for
accelerate's device maps and its own FSDP wrapping). They are the FSDP units and the units of
activation checkpointing. No tensor-parallel plan, no pipeline stages (HFConfig.layouts).

Works on any module holding a `transformers` model, so a user's model in the Python API is split
the same way.
"""

from __future__ import annotations

from torch import nn

from scaletrain.models.family import ParallelPlan


def _inner(module: nn.Module) -> nn.Module:
    return getattr(module, "_checkpoint_wrapped_module", module)  # after activation checkpointing


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The ModuleList of the model's repeated layers (those named in `_no_split_modules`), or None."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    if not names:
        return None
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and len(m) and all(type(_inner(c)).__name__ in names for c in m):
            return m
    return None


PLAN = ParallelPlan(blocks=decoder_layers)
