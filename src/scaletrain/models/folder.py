"""A model folder scaletrain wrote (a finished run, a compressed model): `model_config.json` and
`model.safetensors`, read through scaletrain.untrusted (the folder may have been edited)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from scaletrain.errors import UserError
from scaletrain.models import model_from_config_json
from scaletrain.untrusted.files import read_json
from scaletrain.untrusted.weights import build_checked, load_weights


def read_model_dir(folder: Path) -> tuple[dict, nn.Module]:
    """(description, model) of a folder holding `model_config.json` and `model.safetensors`:
    description read and checked, model built within this machine's memory, weights loaded
    strictly."""
    spec_file = folder / "model_config.json"
    spec = read_json(spec_file, what="a model description (model_config.json)")
    if "name" not in spec or not isinstance(spec.get("args"), dict):
        raise UserError(f'{spec_file}: expected a mapping with "name" and "args" (a model_config.json)')
    model = build_checked(lambda: model_from_config_json(spec), spec_file)
    load_weights(model, folder / "model.safetensors", spec=spec)
    return spec, model
