"""The `hf` family's `model:` section (no torch here: configs are validated before torch is imported)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import field_validator

from scaletrain.models.start import LanguageModelSection, check_model_folder


class HFConfig(LanguageModelSection):
    """A `transformers` causal language model from a local folder: its config.json, its weights
    (model.safetensors, or an index of safetensors shards; none: random weights from the config)
    and its tokenizer (tokenizer.json; none: the data's own)."""

    task: ClassVar[str] = "language_modeling"  # trains on data.kind=text
    # transformers' modules have no tensor-parallel plan or pipeline stages here: data parallel only.
    layouts: ClassVar[tuple[str, ...]] = ("single", "ddp", "zero1", "fsdp")
    document_mask: ClassVar[bool] = False  # no packed-document attention masks

    name: Literal["hf"] = "hf"
    path: str  # the model folder (config.json, model.safetensors, tokenizer.json)
    dtype: Literal["float32", "bfloat16"] = "float32"  # the parameters' dtype (bf16: pure bf16 training)
    # Always false: the folder's code (auto_map) is never run; the architecture must be one that
    # transformers itself defines.
    trust_remote_code: bool = False

    @field_validator("path")
    @classmethod
    def _folder(cls, path: str) -> str:
        return check_model_folder(path, "model.path")

    @field_validator("trust_remote_code")
    @classmethod
    def _no_remote_code(cls, value: bool) -> bool:
        if value:
            raise ValueError("model.trust_remote_code: scaletrain never runs code from a model folder (it is "
                             "untrusted input); use an architecture transformers defines")
        return value

    def weights_folder(self) -> str | None:
        return self.path
