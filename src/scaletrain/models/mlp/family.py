"""The MLP family as the core sees it (see scaletrain.models.family): no parallel plan."""

from __future__ import annotations

from scaletrain.models.family import DataShape, ModelFamily
from scaletrain.models.mlp.config import MLPConfig
from scaletrain.models.mlp.model import MLP
from scaletrain.models.mlp.spec import spec


def args_from_config(section: MLPConfig, data: DataShape) -> dict:
    return {"input_dim": data.input_dim, "num_classes": data.num_classes, "hidden": list(section.hidden),
            "dropout": section.dropout, "input_dropout": section.input_dropout}


FAMILY = ModelFamily(name="mlp", config=MLPConfig, module=MLP, args_from_config=args_from_config, spec=spec)
