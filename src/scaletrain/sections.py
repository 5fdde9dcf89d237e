"""The base of every config section, and the bounds every section shares.

A neutral module: the root config (`scaletrain.config.schema`) composes sections that live beside
the components they configure (a model family's `model:` section in its folder, an optimizer's
options beside its declaration, `parallel:` in `scaletrain.parallel`), and all of them derive from
`Section` here, so none of those packages imports the config package. No torch here: configs are
validated before torch is imported, so that bad input is reported at once.
"""

from __future__ import annotations

import reprlib
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]

# Upper bounds. Each is far above what any real run uses and only stops a typo or a hostile file
# from asking for an absurd allocation, a run that can never end or an integer that overflows
# int64 in torch, numpy or a checkpoint.
INT64 = 2**63  # every integer of the config fits a signed 64-bit integer (checked on every section)
MAX_STEPS = 10**9  # optimizer steps, evaluation/checkpoint intervals: ~1000x the longest runs published
MAX_BATCH = 1 << 20  # samples per rank per micro-batch
MAX_GRAD_ACCUM = 1 << 16  # micro-batches per step
MAX_SEQ_LEN = 1 << 20  # tokens per sample: the longest-context models train at 1M tokens
MAX_BATCH_TOKENS = 1 << 31  # batch x seq_len per micro-batch: int32 indexing limits of some kernels
MAX_VOCAB = 1 << 21  # 8x the largest production vocabularies (Gemma: 262,144)
MAX_WIDTH = 1 << 17  # model.d_model (GPT-3: 12,288) and MLP layer widths
MAX_FF = 1 << 20  # model.d_ff
MAX_LAYERS = 1 << 12  # model.n_layer (DeepNet trained 1,000 layers)
MAX_PROCS = 1 << 12  # processes per node, even with parallel.oversubscribe
MAX_NODES = 1 << 16  # nodes (the largest clusters have ~25,000 GPU nodes)
MAX_THREADS = 1 << 12  # torch intra-op threads (the largest single machines have ~2,000)
MAX_SAMPLE_TOKENS = 1 << 16  # the report's sample: generation has no KV cache (`generate --tokens` for more)
MAX_TIMEOUT = 30 * 24 * 3600.0  # seconds; beyond this a timedelta of the collective timeout overflows soon

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 40, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 4
_REPR.maxdict, _REPR.maxlevel = 3, 2


def brief(value: object) -> str:
    """A short repr for an error line: long strings and containers are cut, never walked whole
    (a value from a hostile file may be huge)."""
    try:
        return _REPR.repr(value)
    except Exception:  # noqa: BLE001 - an int beyond Python's digit limit, a broken __repr__
        return type(value).__name__


def _out_of_range(value: object) -> str | None:
    """Why a value (or an item inside a list/dict value) is unfit for any field, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not -INT64 <= value < INT64:
        return "must fit a 64-bit integer (between -2**63 and 2**63 - 1)"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # e.g. undecodable argv bytes: config.yaml could not hold it
            return "not valid UTF-8 text"
    if isinstance(value, (list, tuple)):
        return next(filter(None, map(_out_of_range, value)), None)
    if isinstance(value, dict):
        return next(filter(None, map(_out_of_range, [*value.keys(), *value.values()])), None)
    return None


class Section(BaseModel):
    # allow_inf_nan=False: `.inf`, `nan` and `1e400` (which YAML reads as inf) are refused in every
    # float field, including those inside lists and dicts and fields added later.
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _fits(cls, value: object) -> object:
        problem = _out_of_range(value)
        if problem:
            raise ValueError(problem)
        return value
