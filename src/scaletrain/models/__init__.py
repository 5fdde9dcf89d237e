"""Model families, one folder each (`models/<name>/`, see `family.py` for the contract), found
through the registry below. Plain nn.Modules are built from a family name and an args dict (as in
model_config.json).

No torch is imported here: the config composes its `model:` section from this registry before
torch is loaded. A family's `FAMILY` (which imports torch) is imported on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scaletrain.errors import UserError
from scaletrain.models.gpt.config import GPTConfig
from scaletrain.models.hf.config import HFConfig
from scaletrain.models.llama.config import LlamaConfig
from scaletrain.models.mlp.config import MLPConfig

if TYPE_CHECKING:
    from torch import nn

    from scaletrain.models.family import ModelFamily


@dataclass(frozen=True)
class Registered:
    config: type  # the family's `model:` section (torch-free)
    family: str  # the module that defines FAMILY


# The registry: one line per family.
FAMILIES: dict[str, Registered] = {
    "gpt": Registered(GPTConfig, "scaletrain.models.gpt.family"),
    "llama": Registered(LlamaConfig, "scaletrain.models.llama.family"),
    "mlp": Registered(MLPConfig, "scaletrain.models.mlp.family"),
    "hf": Registered(HFConfig, "scaletrain.models.hf.family"),
}

__all__ = ["FAMILIES", "build_model", "family_of_module", "get_family", "model_configs", "model_from_config_json"]


def model_configs() -> tuple[type, ...]:
    """Every family's `model:` section, for the config's union."""
    return tuple(entry.config for entry in FAMILIES.values())


def get_family(name: str) -> ModelFamily:
    if not isinstance(name, str) or name not in FAMILIES:
        raise UserError(f"unknown model.name {name!r}; known: {sorted(FAMILIES)}")
    return importlib.import_module(FAMILIES[name].family).FAMILY


def family_of_module(model: nn.Module) -> ModelFamily | None:
    """The family whose parallel plan splits a user's module (the Python API): `hf`'s for a module
    holding a `transformers` model (its classes declare `_no_split_modules`), else None."""
    if any(getattr(m, "_no_split_modules", None) for m in model.modules()):
        return get_family("hf")
    return None


def build_model(name: str, args: dict) -> nn.Module:
    return get_family(name).module.from_args_dict(dict(args))


def model_from_config_json(d: dict) -> nn.Module:
    """Rebuild a model from {"name": ..., "args": {...}} (the model_config.json layout)."""
    if not isinstance(d, dict) or "name" not in d or "args" not in d:
        raise UserError('model config must be a mapping with keys "name" and "args"')
    model = build_model(d["name"], d["args"])
    if d.get("factorized"):  # low-rank layers written by `scaletrain compress --method lowrank`
        from scaletrain.models.lowrank import factorize_skeleton

        try:
            factorize_skeleton(model, d["factorized"])
        except (ValueError, AttributeError) as exc:
            raise UserError(f"model config: factorized: {exc}") from None
    if d.get("lora"):  # low-rank adapters trained on top of the weights (model.lora)
        from scaletrain.models.lora import apply_lora

        apply_lora(model, d["lora"])
    return model
