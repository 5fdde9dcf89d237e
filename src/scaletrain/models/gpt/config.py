"""The GPT's `model:` section (no torch here: configs are validated before torch is imported)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from scaletrain.models.start import PretrainedStart
from scaletrain.sections import MAX_FF, MAX_LAYERS, MAX_WIDTH


class GPTConfig(PretrainedStart):
    task: ClassVar[str] = "language_modeling"  # trains on data.kind=text

    name: Literal["gpt"] = "gpt"
    n_layer: Annotated[int, Field(gt=0, le=MAX_LAYERS)] = 4
    n_head: Annotated[int, Field(gt=0, le=MAX_WIDTH)] = 4
    d_model: Annotated[int, Field(gt=0, le=MAX_WIDTH)] = 256
    d_ff: Annotated[int, Field(gt=0, le=MAX_FF)] | None = None  # default 4 * d_model
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    bias: bool = False
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    rope: bool = False
    tie_embeddings: bool = True
    qk_norm: bool = False  # RMS-normalise each head's queries and keys before attention (and rotary)
    activation: Literal["gelu", "relu2"] = "gelu"  # the MLP's: GELU (tanh) or ReLU squared

    @model_validator(mode="after")
    def _heads_divide(self) -> "GPTConfig":
        if self.d_model % self.n_head:
            raise ValueError(
                f"model.d_model: {self.d_model} must be divisible by model.n_head ({self.n_head})"
            )
        return self
