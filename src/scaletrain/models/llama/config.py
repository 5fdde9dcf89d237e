"""The Llama's `model:` section (no torch here: configs are validated before torch is imported)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from scaletrain.models.start import PretrainedStart
from scaletrain.sections import MAX_FF, MAX_LAYERS, MAX_SEQ_LEN, MAX_WIDTH, Section

Positive = Annotated[float, Field(gt=0.0)]


class RopeScalingConfig(Section):
    """Llama 3.1's long-context frequency scaling (models/llama/rope.py): 3.1 and 3.2 use
    factor 8 and 32 respectively, with 1, 4 and 8192 for the other three."""

    factor: Positive
    low_freq_factor: Positive
    high_freq_factor: Positive
    original_max_position_embeddings: Annotated[int, Field(gt=0, le=MAX_SEQ_LEN)]

    @model_validator(mode="after")
    def _band(self) -> "RopeScalingConfig":
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(f"model.rope_scaling.high_freq_factor: {self.high_freq_factor} must be above "
                             f"model.rope_scaling.low_freq_factor ({self.low_freq_factor})")
        return self


class LlamaConfig(PretrainedStart):
    """A Llama 3 decoder (docs/models.md). The vocabulary and context come from `data:`."""

    task: ClassVar[str] = "language_modeling"  # trains on data.kind=text

    name: Literal["llama"] = "llama"
    n_layer: Annotated[int, Field(gt=0, le=MAX_LAYERS)] = 4
    n_head: Annotated[int, Field(gt=0, le=MAX_WIDTH)] = 4
    n_kv_head: Annotated[int, Field(gt=0, le=MAX_WIDTH)] | None = None  # None: n_head (no grouping)
    d_model: Annotated[int, Field(gt=0, le=MAX_WIDTH)] = 256
    # None: Meta's rule, 2/3 of 4·d_model times ffn_dim_multiplier, rounded up to multiple_of
    d_ff: Annotated[int, Field(gt=0, le=MAX_FF)] | None = None
    multiple_of: Annotated[int, Field(gt=0, le=MAX_FF)] = 256
    ffn_dim_multiplier: Positive | None = None
    rope_theta: Positive = 500000.0
    rope_scaling: RopeScalingConfig | None = None
    qk_norm: bool = False
    tie_embeddings: bool = False
    norm_eps: Positive = 1e-5
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0

    @model_validator(mode="after")
    def _heads(self) -> "LlamaConfig":
        if self.d_model % self.n_head:
            raise ValueError(f"model.d_model: {self.d_model} must be divisible by model.n_head ({self.n_head})")
        if (self.d_model // self.n_head) % 2:
            raise ValueError(f"model.d_model: d_model / n_head = {self.d_model // self.n_head} must be even "
                             "(rotary positions rotate pairs of dimensions)")
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise ValueError(f"model.n_kv_head: {self.n_kv_head} must divide model.n_head ({self.n_head}); "
                             "each key/value head serves a whole group of query heads")
        return self

