"""Generators of malformed input for the bad-input fuzz (tests/reliability/test_bad_input.py and
benchmarks/faults.py): each draws a `Case`, an argv for `scaletrain` and the text its one error
line must contain (the key, file or value at fault).

The config cases are derived from the schema itself (every key of every section, its type and its
bounds), so a key added later is fuzzed too. Every case is invalid by construction: a case that
trains would write into the run folder the check guards, and fail the test loudly.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path

import annotated_types as at
from hypothesis import strategies as st
from pydantic import BaseModel

from scaletrain.config.schema import Config
from scaletrain.models.gpt.config import GPTConfig

# Valid for every field (keys not fuzzed: the discriminator and the run folder/resume under test).
_SKIP = {("model", "name"), ("train", "run_dir"), ("train", "resume"), (None, "name")}
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=12)


@dataclass(frozen=True)
class Case:
    kind: str
    argv: tuple[str, ...]
    expected: str  # a substring of the one error line
    files: tuple[tuple[str, bytes], ...] = ()  # (relative path, content) written before the run


def _sections() -> dict[str, type[BaseModel]]:
    out = {}
    for name, field in Config.model_fields.items():
        annotation = GPTConfig if name == "model" else field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out[name] = annotation
    return out


SECTIONS = _sections()
FIELDS = [(s, k, f) for s, model in SECTIONS.items() for k, f in model.model_fields.items() if (s, k) not in _SKIP]


def _scalar(annotation) -> type | None:
    """int or float for a numeric field (also inside Optional), else None."""
    args = typing.get_args(annotation) or (annotation,)
    kinds = {a for a in args if a in (int, float)}
    others = [a for a in args if a not in (int, float, type(None))]
    return next(iter(kinds)) if kinds and not others else None


def _bounds(field) -> list:
    return [m for m in field.metadata if isinstance(m, (at.Gt, at.Ge, at.Lt, at.Le))]


BOUNDED = [(s, k, f) for s, k, f in FIELDS if _bounds(f) and _scalar(f.annotation)]
NUMERIC = [(s, k, f) for s, k, f in FIELDS if _scalar(f.annotation)]


def train(*overrides: str) -> tuple[str, ...]:
    return ("train", "gpt-tiny", *overrides)


@st.composite
def unknown_key(draw) -> Case:
    section = draw(st.sampled_from(sorted(SECTIONS)))
    key = draw(NAMES.filter(lambda k: k not in SECTIONS[section].model_fields))
    value = draw(st.sampled_from(["1", "true", "x", "[1, 2]", "0.5"]))
    return Case("unknown key", train(f"{section}.{key}={value}"), f"{section}.{key}: unknown key")


@st.composite
def wrong_type(draw) -> Case:
    section, key, field = draw(st.sampled_from(FIELDS))
    if _scalar(field.annotation):  # a word where a number belongs
        value = "x" + draw(NAMES)
    else:  # a nested list and mapping fits no field
        value = "[[1], {x: 2}]"
    return Case("wrong type", train(f"{section}.{key}={value}"), f"{section}.{key}")


@st.composite
def out_of_range(draw) -> Case:
    section, key, field = draw(st.sampled_from(BOUNDED))
    bound = draw(st.sampled_from(_bounds(field)))
    kind = _scalar(field.annotation)
    step = draw(st.integers(1, 1000)) if kind is int else draw(st.floats(0.001, 1000, allow_nan=False))
    if isinstance(bound, at.Gt):
        value = bound.gt - (step - 1 if kind is int else step)  # gt: the bound itself is already out
    elif isinstance(bound, at.Ge):
        value = bound.ge - step
    elif isinstance(bound, at.Lt):
        value = bound.lt + (step - 1 if kind is int else step)
    else:
        value = bound.le + step
    if kind is int:
        value = int(value)
    return Case("out of range", train(f"{section}.{key}={value!r}"), f"{section}.{key}")


@st.composite
def missing_file(draw) -> Case:
    name = draw(NAMES)
    missing = f"/nonexistent/{name}"
    choice = draw(st.sampled_from(["data.path", "train.resume", "config", "mixture", "eval", "generate",
                                   "verify", "inspect"]))
    if choice == "data.path":
        return Case("missing file", train(f"data.path={missing}"), missing)
    if choice == "train.resume":
        return Case("missing file", train(f"train.resume={missing}"), missing)
    if choice == "config":
        return Case("missing file", ("train", f"{missing}.yaml"), f"{missing}.yaml")
    if choice == "mixture":
        return Case("missing file", train("data.path=", f"data.mixture=[{{path: {missing}}}]"), missing)
    if choice in ("eval", "generate"):
        return Case("missing file", (choice, missing), missing)
    return Case("missing file", ("data", choice, missing), missing)


@st.composite
def conflicting(draw) -> Case:
    n = draw(st.integers(2, 64))
    cases = [
        (train("parallel.strategy=single", f"parallel.nproc={n}"), "parallel.strategy"),
        (train("parallel.strategy=ddp", f"parallel.nnodes={n}"), "parallel.rdzv_endpoint"),
        (train(f"train.max_steps={n}", f"schedule.warmup_steps={n + draw(st.integers(0, 9))}"), "schedule.warmup_steps"),
        (train("parallel.strategy=fsdp", "optim.name=adafactor"), "optim.name"),
        (train("optim.lr_scaling=linear"), "optim.reference_batch"),
        (train(f"model.n_head={n}", f"model.d_model={n * 8 + 1}"), "model.d_model"),
        (train("data.kind=images"), "data.kind"),
        (train("train.precision=fp16", "train.device=cpu"), "train.precision=fp16"),
        (train("train.early_stopping=0"), "train.early_stopping"),
        (train(f"optim.name={draw(NAMES)}x"), "optim.name"),
    ]
    argv, expected = draw(st.sampled_from(cases))
    return Case("conflicting options", argv, expected)


@st.composite
def bad_override(draw) -> Case:
    key = draw(NAMES)
    form = draw(st.sampled_from([f"train.{key}", f"={key}", f"train..{key}=1", f".{key}=1"]))
    return Case("bad override", train(form), f"override {form!r}")


@st.composite
def bad_cli(draw) -> Case:
    word = draw(NAMES)
    cases = [
        (("x" + word,), "x" + word),
        (("train", f"--{word}"), f"--{word}"),
        (("eval", "--batches", word), "--batches"),
        (("generate", "x", "--tokens", word), "--tokens"),
        (("prepare", "--workers", word), "--workers"),
        (("prepare", "stdlib"), "--out"),
        (("data", f"x{word}"), f"x{word}"),
        (("verify", "gpt-tiny", f"--{word}"), f"--{word}"),
    ]
    argv, expected = draw(st.sampled_from(cases))
    return Case("bad command line", argv, expected)


@st.composite
def bad_yaml(draw) -> Case:
    name = draw(NAMES) + ".yaml"
    body = draw(st.sampled_from([
        b"train: [1, 2\n",  # unclosed flow sequence
        b"- train\n- optim\n",  # a list at the top level
        b"train:\n  max_steps: 5\n bad_indent: 1\n",
        b"train: 5\n",  # a section that is a number
        b"optim:\n  lr: fast\n",
        b"\xff\xfe\x00garbage",  # not UTF-8
        b"nonsense_section:\n  a: 1\n",
    ]))
    expected = {b"train: 5\n": "train", b"optim:\n  lr: fast\n": "optim.lr",
                b"nonsense_section:\n  a: 1\n": "nonsense_section"}.get(body, name)
    return Case("malformed config file", ("train", f"{{dir}}/{name}"), expected, ((name, body),))


@st.composite
def bad_data(draw) -> Case:
    """Malformed data files: MNIST IDX files of random bytes, a text folder too small to split, a
    shard folder whose manifest is garbage."""
    junk = draw(st.binary(min_size=0, max_size=64))
    choice = draw(st.sampled_from(["idx", "one file", "manifest verify", "manifest mixture"]))
    if choice == "idx":
        files = tuple((f"mnist/{n}", junk) for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                      "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
        return Case("malformed data file", ("train", "mlp-digits", "data.path={dir}/mnist"), "idx", files)
    if choice == "one file":
        return Case("malformed data file", train("data.path={dir}/text"), "need at least 2 files",
                    (("text/only.txt", b"x" + junk),))
    garbage = b"{" + junk.replace(b"}", b"")
    if choice == "manifest verify":
        return Case("malformed data file", ("data", "verify", "{dir}/shards"), "shards: 1 problem",
                    (("shards/manifest.json", garbage),))
    return Case("malformed data file", train("data.path=", "data.mixture=[{path: '{dir}/shards'}]"),
                "manifest.json", (("shards/manifest.json", garbage),))


ALL = st.one_of(unknown_key(), wrong_type(), out_of_range(), missing_file(), conflicting(), bad_override(),
                bad_cli(), bad_yaml(), bad_data())


def materialize(case: Case, folder: Path) -> list[str]:
    """Write the case's files under `folder` and return its argv with {dir} filled in."""
    for rel, content in case.files:
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return [a.replace("{dir}", str(folder)) for a in case.argv]
