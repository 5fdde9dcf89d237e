"""The MLP's `model:` section (no torch here: configs are validated before torch is imported)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from scaletrain.sections import MAX_LAYERS, MAX_WIDTH, Section


class MLPConfig(Section):
    task: ClassVar[str] = "classification"  # trains on data.kind=images

    name: Literal["mlp"] = "mlp"
    hidden: Annotated[list[Annotated[int, Field(gt=0, le=MAX_WIDTH)]], Field(max_length=MAX_LAYERS)] = [128, 64]
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # after each hidden layer's activation
    input_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # on the input features
