"""Settings of `scaletrain prepare`: one pydantic model for the YAML file and the command line.

Unknown keys are errors naming the key, like every other config in scaletrain.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from scaletrain.errors import UserError

PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


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


class CleanConfig(_Strict):
    normalize: Literal["NFC", "NFKC", "none"] = "NFC"
    min_chars: Annotated[int, Field(ge=0)] | None = None
    max_chars: Annotated[int, Field(gt=0)] | None = None
    max_line_chars: Annotated[int, Field(gt=0)] | None = None
    max_non_alnum_fraction: Fraction | None = None
    max_repeated_line_fraction: Fraction | None = None


class DedupConfig(_Strict):
    exact: bool = True
    near: bool = True
    bands: Annotated[int, Field(ge=1, le=256)] = 14
    rows: Annotated[int, Field(ge=1, le=64)] = 8
    ngram: Annotated[int, Field(ge=1, le=32)] = 5  # words per shingle
    # A candidate pair counts as a duplicate when its estimated Jaccard reaches this;
    # None: the LSH threshold (1/bands)^(1/rows).
    threshold: Fraction | None = None
    partitions: Annotated[int, Field(ge=1, le=4096)] = 16  # hash partitions (memory / partitions)
    seed: int = 0


class PrepareConfig(_Strict):
    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig(kind="stdlib")])
    clean: CleanConfig = CleanConfig()
    dedup: DedupConfig = DedupConfig()
    vocab_size: Annotated[int, Field(ge=258, le=2**31 - 1)] = 8192
    tokenizer: str | None = None  # reuse this tokenizer.json instead of training one
    tokenizer_sample_bytes: Annotated[int, Field(gt=0)] = 256 << 20  # training text for BPE
    val_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05  # by document id
    task_bytes: Annotated[int, Field(gt=0)] = 8 << 20  # input per task
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
