"""Settings of `scaletrain prepare`: one pydantic model for the YAML file and the command line.

Unknown keys are errors naming the key, like every other config in scaletrain.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from scaletrain.config.schema import CleanConfig, DedupConfig  # shared with train's `data` section
from scaletrain.errors import UserError

PositiveFloat = Annotated[float, Field(gt=0)]


class _Strict(BaseModel):
    # allow_inf_nan=False: a weight of `inf` or `1e400` is refused by name, as in train configs.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SourceConfig(_Strict):
    kind: Literal["auto", "text", "jsonl", "parquet", "stdlib"] = "auto"
    path: str | None = None  # file, directory or glob; None only for kind=stdlib
    pattern: str = "**/*"  # files under a directory path
    field: str = "text"  # JSONL key or Parquet column
    weight: PositiveFloat = 1.0  # mixture weight: expected copies of each training document
    max_bytes: Annotated[int, Field(gt=0)] | None = None  # a deterministic subset of the files

    @model_validator(mode="after")
    def _needs_path(self) -> "SourceConfig":
        if self.kind != "stdlib" and not self.path:
            raise ValueError(f"sources: kind {self.kind!r} needs a path")
        return self


class PrepareConfig(_Strict):
    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig(kind="stdlib")])
    clean: CleanConfig = CleanConfig()
    dedup: DedupConfig = DedupConfig()
    vocab_size: Annotated[int, Field(ge=258, le=2**31 - 1)] = 8192
    tokenizer: str | None = None  # reuse this tokenizer.json instead of training one
    eot: str | None = None  # with `tokenizer`: the token that ends each document (None: <|endoftext|>)
    # Training text for BPE, drawn by a hash of each id (None: tokenizer_sample_size's rule).
    tokenizer_sample_bytes: Annotated[int, Field(gt=0)] | None = None
    val_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05  # by document id
    task_bytes: Annotated[int, Field(gt=0)] | None = None  # input per task (None: task_size's rule)
    max_doc_bytes: Annotated[int, Field(gt=0)] = 64 << 20  # longer documents/lines are skipped
    undecodable: Literal["replace", "skip"] = "replace"
    shard_tokens: Annotated[int, Field(gt=0)] = 1 << 26
    seed: int = 0  # split, mixture sampling and tokenizer sample

    @model_validator(mode="after")
    def _check(self) -> "PrepareConfig":
        if not self.sources:
            raise ValueError("sources: an empty list; give at least one source")
        if self.tokenizer is not None and not Path(self.tokenizer).is_file():
            raise ValueError(f"tokenizer: file {self.tokenizer!r} not found")
        return self


MiB = 1 << 20
SAMPLE_BYTES_PER_TOKEN = 1024  # tokenizer sample: 1 KiB of text per vocabulary entry...
MIN_SAMPLE_BYTES = 4 * MiB  # ...and never less than this
MIN_TASK_BYTES, MAX_TASK_BYTES, TASKS_PER_CORPUS = 1 * MiB, 64 * MiB, 64


def tokenizer_sample_size(cfg: PrepareConfig) -> int:
    """Bytes of training text the tokenizer is trained on, at most. BPE training costs about as much
    CPU per byte as encoding, and its gains flatten early (docs/data.md: 1.4 % fewer tokens for 8x
    the text), so the sample is bounded rather than the whole corpus."""
    if cfg.tokenizer_sample_bytes is not None:
        return cfg.tokenizer_sample_bytes
    return max(MIN_SAMPLE_BYTES, SAMPLE_BYTES_PER_TOKEN * cfg.vocab_size)


def task_size(cfg: PrepareConfig, input_bytes: int) -> int:
    """Input bytes per task: a 64th of the input, between 1 and 64 MiB. Many tasks per worker keep
    every core busy to the end of a phase (the last task of a phase runs alone); a function of
    the input only, never of the number of workers, so the output does not depend on them."""
    if cfg.task_bytes is not None:
        return cfg.task_bytes
    return int(min(MAX_TASK_BYTES, max(MIN_TASK_BYTES, input_bytes // TASKS_PER_CORPUS)))


def validate(raw: dict) -> PrepareConfig:
    from scaletrain.config.load import describe

    try:
        return PrepareConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(describe(exc)) from None


def load_yaml(path: str | Path) -> dict:
    """The raw mapping of a prepare config file (validated later, after CLI overrides)."""
    from scaletrain.config.load import read_yaml_file  # size, depth, alias and duplicate-key limits

    raw = read_yaml_file(path, f"--config {path}")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"--config: {path} must hold a mapping of settings")
    return raw
