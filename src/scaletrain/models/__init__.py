"""Model zoo: plain nn.Modules built from a name and an args dict (as in model_config.json)."""
from __future__ import annotations

import torch.nn as nn

from scaletrain.errors import UserError
from scaletrain.models.gpt import GPT, GPTArgs
from scaletrain.models.mlp import MLP, MLPArgs

MODELS: dict[str, type[nn.Module]] = {"gpt": GPT, "mlp": MLP}

__all__ = ["GPT", "GPTArgs", "MLP", "MLPArgs", "MODELS", "build_model", "model_from_config_json"]


def build_model(name: str, args: dict) -> nn.Module:
    if name not in MODELS:
        raise UserError(f"unknown model.name {name!r}; known: {sorted(MODELS)}")
    return MODELS[name].from_args_dict(dict(args))


def model_from_config_json(d: dict) -> nn.Module:
    """Rebuild a model from {"name": ..., "args": {...}} (the model_config.json layout)."""
    if not isinstance(d, dict) or "name" not in d or "args" not in d:
        raise UserError('model config must be a mapping with keys "name" and "args"')
    model = build_model(d["name"], d["args"])
    if d.get("factorized"):  # low-rank layers written by `scaletrain compress --method lowrank`
        from scaletrain.compress.lowrank import factorize_skeleton

        try:
            factorize_skeleton(model, d["factorized"])
        except (ValueError, AttributeError) as exc:
            raise UserError(f"model config: factorized: {exc}") from None
    return model
