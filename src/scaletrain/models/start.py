"""What a language model's `model:` section may add to its family's keys (no torch here: configs
are validated before torch is imported):

- `model.lora.*`: train low-rank adapters (LoRA, with `peft`) on top of frozen weights;
- `model.init_from=DIR` (native families): start from the weights of a Hugging Face model folder
  (its `config.json` decides the architecture; see `models/<family>/hf.py` for the names).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator

from scaletrain.sections import MAX_WIDTH, Section, brief

# A module name peft matches against the model's (`attn.qkv` matches `blocks.3.attn.qkv`).
ModuleName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.]+$")]


class LoraConfig(Section):
    """Low-rank adapters (Hu et al. 2021): each target Linear W becomes W + (alpha / rank)·B·A with
    A (rank x in) and B (out x rank) trained and W frozen; B starts at zero, so training starts
    from the model as it was. Only the adapters get gradients and optimizer state."""

    rank: Annotated[int, Field(gt=0, le=MAX_WIDTH)]
    alpha: Annotated[float, Field(gt=0.0)] | None = None  # None: rank (a scale alpha/rank of 1)
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # on the adapters' input
    # Module names (or name suffixes) to adapt; None: every linear layer of the model's blocks.
    target_modules: Annotated[list[ModuleName], Field(min_length=1, max_length=1000)] | None = None


def check_model_folder(path: str, key: str) -> str:
    """A Hugging Face model folder: a directory with a config.json (its content is read later,
    through scaletrain.untrusted)."""
    try:
        folder = Path(path).expanduser()
        ok = folder.is_dir()
        has_config = ok and (folder / "config.json").is_file()
    except (OSError, ValueError, RuntimeError):  # too long, a NUL byte, `~nosuchuser`
        ok = has_config = False
    if not ok:
        raise ValueError(f"{key}: {brief(path)} is not a directory (a Hugging Face model folder)")
    if not has_config:
        raise ValueError(f"{key}: {brief(path)} has no config.json (a Hugging Face model folder holds "
                         "config.json and model.safetensors)")
    return path


class LanguageModelSection(Section):
    """The keys every language-model family's section shares."""

    lora: LoraConfig | None = None

    def weights_folder(self) -> str | None:
        """The Hugging Face model folder this run starts from (its weights and tokenizer), or None."""
        return None


class PretrainedStart(LanguageModelSection):
    """A native family that can start from a Hugging Face checkpoint (`models/<family>/hf.py`)."""

    # A Hugging Face model folder (config.json + model.safetensors): its weights, architecture and
    # tokenizer. A fine-tune: the optimizer and schedule start fresh.
    init_from: str | None = None

    @field_validator("init_from")
    @classmethod
    def _folder(cls, path: str | None) -> str | None:
        return None if path is None else check_model_folder(path, "model.init_from")

    def weights_folder(self) -> str | None:
        return self.init_from


# Keys of a section that are not the module's args (args_from_config leaves them out).
START_KEYS = frozenset({"name", "lora", "init_from"})
