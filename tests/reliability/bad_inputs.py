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


# ---- issue 14: generators for whole files and every subcommand's arguments ----------------------
# These draw `hostile_cases.Case`s (planted copies of the shared trained run or prepared data, run by
# hostile_cases.run_case): the scratch folder must stay byte-identical, nothing added.

import dataclasses  # noqa: E402
import json  # noqa: E402

import yaml  # noqa: E402

import hostile_cases as hc  # noqa: E402
import planted  # noqa: E402

# Any YAML/JSON value: what a careless edit or a hostile file puts where a setting belongs.
ANY = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=8) |
                   st.floats(allow_nan=False, allow_infinity=False),
                   lambda inner: st.lists(inner, min_size=1, max_size=3) |
                   st.dictionaries(NAMES, inner, min_size=1, max_size=3), max_leaves=8)
CONTAINERS = st.lists(ANY, min_size=1, max_size=3) | st.dictionaries(NAMES, ANY, min_size=1, max_size=3)


def _scalar_only(annotation) -> bool:
    """A field whose every accepted form is a scalar: no list or mapping can pass it."""
    args = typing.get_args(annotation) or (annotation,)
    if typing.get_origin(annotation) is typing.Literal:
        return True
    return all(a in (int, float, str, bool, type(None)) or typing.get_origin(a) is typing.Literal for a in args)


# Keys every train case also sets on the command line (hostile_cases.TRAIN_DEFAULTS): the override
# wins over the file, so a bad value there would never be read.
_OVERRIDDEN = {tuple(o.split("=")[0].split(".")) for o in hc.TRAIN_DEFAULTS} | {("data", "cache_dir")}
SCALAR_FIELDS = [(s, k) for s, k, f in FIELDS if _scalar_only(f.annotation) and (s, k) not in _OVERRIDDEN]


def _tiny() -> dict:
    return yaml.safe_load(hc.tiny_yaml())


@st.composite
def config_file(draw) -> hc.Case:
    """A whole config file (the gpt-tiny preset, changed in one place) with a random structure where
    it does not belong: a container where a scalar setting belongs, an unknown section, a top level
    that is not a mapping, or a key given twice."""
    raw = _tiny()
    how = draw(st.sampled_from(["container at a scalar", "unknown section", "top level", "duplicate key"]))
    if how == "container at a scalar":
        section, key = draw(st.sampled_from(SCALAR_FIELDS))
        raw.setdefault(section, {})[key] = draw(CONTAINERS)
        text, expected = yaml.safe_dump(raw), f"{section}.{key}"
    elif how == "unknown section":
        name = draw(NAMES.filter(lambda n: n not in Config.model_fields))
        raw[name] = draw(ANY)
        text, expected = yaml.safe_dump(raw), name
    elif how == "top level":  # a list or a scalar (never empty: an empty file is the default config)
        value = draw(st.lists(ANY, min_size=1, max_size=3) | st.text(alphabet="abcxyz", min_size=1, max_size=8) |
                     st.integers(1, 10**6))
        text, expected = yaml.safe_dump(value), "cfg.yaml"
    else:
        section = draw(st.sampled_from(["train", "optim", "data", "model"]))
        key = draw(st.sampled_from(sorted(raw[section])))
        again = yaml.safe_dump({key: raw[section][key]}).strip()
        text = yaml.safe_dump(raw).replace(f"{section}:\n", f"{section}:\n  {again}\n", 1)
        expected = key
    return hc.Case(f"config file: {how} ({expected}) #{_digest(text.encode())}", "fuzz: config file",
                   ("train", "{dir}/cfg.yaml"), expected, (("cfg.yaml", text.encode()),))


def _digest(data: bytes) -> str:
    """A short name for drawn content: distinct inputs get distinct case names."""
    import xxhash

    return xxhash.xxh3_64_hexdigest(data)[:10]


def _manifest_paths(m: dict) -> list[tuple]:
    out = [("dtype",), ("vocab_size",), ("eot_id",), ("schema_version",), ("splits",), ("tokenizer_fingerprint",)]
    for split in m["splits"]:
        out += [("splits", split), *[("splits", split, k) for k in ("tokens", "documents", "bytes", "files")]]
        out += [("splits", split, "files", 0, k) for k in ("bin", "idx", "tokens", "documents", "xxh3_128")]
    return out


@st.composite
def manifest(draw) -> hc.Case:
    """A prepared folder whose manifest.json was edited (and, as an attacker would, re-signed):
    a field of the wrong type, negative, a count that no longer fits, a name leaving the folder,
    a key removed. Read by data verify, data inspect or a training mixture."""
    path = draw(st.sampled_from(_manifest_paths({"splits": {"train": {}, "val": {}}})))
    leaf = path[-1]
    if leaf in ("bin", "idx"):
        value = draw(st.sampled_from(["../stolen.bin", "/etc/passwd", "a/../../x", "..", "", "sub/../../../etc/hosts"])
                     | CONTAINERS)
    elif leaf in ("tokens", "documents", "vocab_size", "bytes"):
        value = draw(st.integers(-10**6, -1) | st.text(max_size=4) | CONTAINERS | st.booleans())
    elif leaf == "eot_id":
        value = draw(st.integers(-10**6, -1) | st.integers(512, 10**6) | st.text(max_size=4))
    else:
        value = draw(CONTAINERS | st.integers() | st.text(max_size=6).filter(lambda t: t not in ("uint16", "uint32")))
    remove = leaf not in ("bytes",) and draw(st.booleans())  # dropping `bytes` would be only statistics
    resign = draw(st.booleans())
    if leaf == "tokenizer_fingerprint":
        remove = False
    command = draw(st.sampled_from(["verify", "inspect", "mixture"]))

    def plant(site: planted.Site) -> None:
        from scaletrain.data import shards

        m = json.loads((site.data / "manifest.json").read_text())
        doc = m
        for part in path[:-1]:
            doc = doc[part]
        if remove:
            del doc[leaf]
        else:
            doc[leaf] = value
        if resign:
            shards.write_manifest(site.data, m)
        else:  # an edit without the self-checksum: damaged
            (site.data / "manifest.json").write_text(json.dumps(m))

    plant.__name__ = f"manifest_{'_'.join(map(str, path))}"
    argv, expected, listing = {
        "verify": (("data", "verify", "{data}"), "problem", True),
        "inspect": (("data", "inspect", "{data}"), "manifest.json", False),
        "mixture": (train("data.path=", "data.mixture=[{path: '{data}'}]", "train.run_dir={dir}/new-run"),
                    "manifest.json", False),
    }[command]
    if leaf == "tokenizer_fingerprint" and not remove:  # only verify compares it with the tokenizer file
        command = "verify"
        argv, expected, listing = ("data", "verify", "{data}"), "problem", True
    change = "removed" if remove else f"= {value!r}"[:40]
    return hc.Case(f"manifest {'/'.join(map(str, path))} {change} ({command}{', re-signed' if resign else ''})",
                   "fuzz: manifest", argv, expected, plant=(plant,), needs=("data",), listing=listing)


_NOT_TEXT = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(),
                      st.lists(st.integers(), max_size=3), st.dictionaries(NAMES, st.integers(), max_size=2))


@st.composite
def jsonl_or_parquet(draw) -> hc.Case:
    """An input for `prepare` that holds no text to train on: a JSONL whose lines are blank, not
    JSON, not objects, without the field or with a field that is never a (non-empty) string; a
    Parquet file whose column is not text, lacks the field, is empty or is not
    Parquet at all. 0 documents is bad input, not a finished dataset."""
    kind = draw(st.sampled_from(["jsonl", "parquet"]))
    if kind == "jsonl":
        line = st.one_of(
            st.just(b""), st.just(b"   "), st.binary(min_size=1, max_size=12).map(lambda b: b"\xff" + b.replace(b"\n", b"")),
            st.text(alphabet="{[:,abc", min_size=1, max_size=10).map(str.encode),
            _NOT_TEXT.map(lambda v: json.dumps(v).encode()),
            _NOT_TEXT.map(lambda v: json.dumps({"text": v}).encode()),
            st.just(json.dumps({"text": ""}).encode()),
            st.text(max_size=10).map(lambda t: json.dumps({"other": t}).encode()))
        body = b"\n".join(draw(st.lists(line, max_size=6)))
        name = "in.jsonl"
    else:
        import pyarrow as pa

        column = draw(st.sampled_from(["ints", "floats", "bools", "lists", "other field", "empty", "junk"]))
        rows = draw(st.integers(1, 5))
        table = {"ints": {"text": list(range(rows))}, "floats": {"text": [0.5] * rows},
                 "bools": {"text": [True] * rows}, "lists": {"text": [[1, 2]] * rows},
                 "other field": {"body": ["some words"] * rows},
                 "empty": {"text": pa.array([], type=pa.string())}}.get(column)
        body = hc.parquet_bytes(table) if table is not None else draw(st.binary(min_size=0, max_size=64))
        name = "in.parquet"
    return hc.Case(f"prepare: {kind} without text #{_digest(body)}", "fuzz: prepare input",
                   ("prepare", "{dir}/" + name, *hc.PREP_OUT), name, ((name, body),))


def _checksums_edit(change, name: str):
    """Edit checksums.json's entry `name` (RNG: the checkpoint's RNG file, whichever it has)."""
    def plant(site):
        file = planted.rng_file(site.ckpt) if name == "RNG" else name
        planted.state_change(lambda d: change(d, file), "checksums.json")(site)
    return plant


TRAINER_KEYS = ("step", "position", "best_val", "best_step", "bad_evals", "units_seen", "train_seconds", "evals",
                "skipped_steps", "rollbacks", "lr_scale", "data", "rng", "model")


@st.composite
def checkpoint_mutation(draw) -> hc.Case:
    """A checkpoint of the shared run edited by hand or by an attacker (checksums rewritten to
    match): trainer.json with a value of the wrong type or a key removed, checksums.json of the
    wrong shape or naming files outside the folder, .metadata whose sizes or storage no longer
    describe the data. Resumed by path or by auto."""
    target = draw(st.sampled_from(["trainer.json", "checksums.json", ".metadata"]))
    if target == "trainer.json":
        key = draw(st.sampled_from(TRAINER_KEYS))
        wrong = st.text(max_size=5) if key in ("data", "rng", "evals", "model") else \
            st.one_of(st.text(max_size=5), CONTAINERS, st.booleans())
        value = draw(wrong)
        # Only the RNG state must be there: the loop's counters have defaults (older checkpoints).
        remove = key == "rng" and draw(st.booleans())

        def change(doc):
            k = key if key in doc else "step"  # a key only newer checkpoints record ("model")
            if remove:
                del doc[k]
            else:
                doc[k] = value
        planter, what = planted.state_change(change), f"trainer.json {key} {'removed' if remove else f'= {value!r}'[:30]}"
        expected = "trainer.json"
    elif target == "checksums.json":
        how = draw(st.sampled_from(["not a mapping", "value not a string", "outside", "entry missing"]))
        if how == "not a mapping":
            doc = draw(st.lists(ANY, max_size=3) | st.text(max_size=5) | st.integers())
            planter = planted.raw_file("checksums.json", json.dumps(doc))
            how += f" {json.dumps(doc)[:30]}"
        elif how == "value not a string":
            value = draw(st.integers() | CONTAINERS | st.none() | st.booleans())
            name = draw(st.sampled_from(["RNG", "trainer.json", ".metadata", "__0_0.distcp"]))
            planter = _checksums_edit(lambda d, file: d.update({file: value}), name)
            how += f" ({name} = {value!r:.20})"
        elif how == "outside":
            name = draw(st.sampled_from(["../../config.yaml", "/etc/hostname", "../step_00000002/trainer.json",
                                         "sub/../../x", "/dev/null"]))
            planter = lambda site, name=name: planted.rehash(site, {name: "0" * 32})  # noqa: E731
            how += f" ({name})"
        else:
            name = draw(st.sampled_from(["RNG", "trainer.json", ".metadata", "__0_0.distcp"]))
            planter = _checksums_edit(lambda d, file: d.pop(file) and None, name)
            how += f" ({name})"
        what, expected = f"checksums.json {how}", "checksums.json"
    else:
        # (A changed dtype is not drawn: the data file records each tensor's own dtype, so the
        # declared one is never used to read it.)
        how = draw(st.sampled_from(["tensor size", "storage offset", "storage length"]))
        amount = draw(st.integers(1, 10**9))

        def planter(site, how=how, amount=amount):
            import pickle

            import torch
            from torch.distributed.checkpoint.metadata import TensorStorageMetadata

            meta = pickle.loads((site.ckpt / ".metadata").read_bytes())
            name = "model.tok_emb.weight"
            if how == "tensor size":
                md = meta.state_dict_metadata[name]
                assert isinstance(md, TensorStorageMetadata)
                md.size = torch.Size([md.size[0] + amount, *md.size[1:]])
            else:
                key = next(k for k in meta.storage_data if k.fqn == name)
                info = meta.storage_data[key]
                field_name = "offset" if how == "storage offset" else "length"
                meta.storage_data[key] = dataclasses.replace(info, **{field_name: getattr(info, field_name) + amount})
            (site.ckpt / ".metadata").write_bytes(pickle.dumps(meta))
            planted.rehash(site)
        what, expected = f".metadata {how} +{amount}", "step_00000002"
    by = draw(st.sampled_from(["auto", "path"]))
    argv = train("train.run_dir={run}", "train.resume=auto") if by == "auto" else \
        train("train.resume={ckpt}", "train.run_dir={dir}/new-run")
    planter.__name__ = what.replace(" ", "_")
    return hc.Case(f"{what} (resume {by})", "fuzz: checkpoint", argv, expected, plant=(planter,), needs=("run",))


# Each subcommand's flags: (argv before the flag, flag, kind, lowest valid value, highest, needs);
# a lowest value of 0.0 means "0 is valid", a positive one "0 is not". Only values on the invalid side
# are drawn, so a broken check never starts a long job.
FLAGS = [
    (("eval", "{run}"), "--batches", int, 0, None, "run"),
    (("generate", "{run}"), "--tokens", int, 1, None, "run"),
    (("generate", "{run}"), "--temperature", float, 0.0, None, "run"),
    (("generate", "{run}"), "--top-k", int, 0, None, "run"),
    (("compress", "{run}", "--out", "{dir}/c", "--method", "prune", *hc.COMPRESS[2:]), "--amount", float, 0.0, 1.0, "run"),
    (("compress", "{run}", "--out", "{dir}/c", "--method", "prune-structured", *hc.COMPRESS[2:]), "--head-amount", float,
     0.0, 1.0, "run"),
    (("compress", "{run}", "--out", "{dir}/c", "--method", "lowrank", *hc.COMPRESS[2:]), "--energy", float, 0.0, 1.0, "run"),
    (("compress", "{run}", "--out", "{dir}/c", "--method", "distill", *hc.COMPRESS[2:]), "--alpha", float, 0.0, 1.0, "run"),
    (("compress", "{run}", "--out", "{dir}/c", "--method", "prune", *hc.COMPRESS[2:]), "--finetune-steps", int, 0, None,
     "run"),
    (("compress", "{run}", "--out", "{dir}/c", *hc.COMPRESS), "--threads", int, 1, None, "run"),
    (("plan", "gpt-tiny"), "--world-size", int, 1, None, None),
    (("plan", "gpt-tiny"), "--device-memory", float, 1e-9, None, None),
    (("profile", "gpt-tiny", "--out", "{dir}/prof"), "--steps", int, 1, None, None),
    (("profile", "gpt-tiny", "--out", "{dir}/prof"), "--top", int, 1, None, None),
    (("verify", "gpt-tiny"), "--steps", int, 1, None, None),
    (("bench", "optim", "--out", "{dir}/bench"), "--steps", int, 1, None, None),
    (("doctor", "{run}"), "--device-memory", float, 1e-9, None, "run"),
    (("data", "inspect", "{data}"), "--tokens", int, 1, None, "data"),
    (("data", "inspect", "{data}"), "--samples", int, 0, None, "data"),
    (("prepare", "{dir}/in", *hc.PREP_OUT), "--workers", int, 1, None, None),
    (("prepare", "{dir}/in", *hc.PREP_OUT), "--val-fraction", float, 0.0, 1.0, None),
    (("prepare", "{dir}/in", *hc.PREP_OUT), "--threshold", float, 1e-9, 1.0, None),
    (("prepare", "{dir}/in", *hc.PREP_OUT), "--bands", int, 1, None, None),
    (("prepare", "{dir}/in", *hc.PREP_OUT), "--max-non-alnum-fraction", float, 0.0, 1.0, None),
    (("prepare", "{dir}/in", *hc.PREP_OUT), "--task-bytes", int, 1, None, None),
]
CHOICES = [  # flags that take a name: an unknown one
    (("compress", "{run}", "--out", "{dir}/c"), "--method", "run"),
    (("export", "{run}", "--out", "{dir}/e"), "--format", "run"),
    (("export", "{run}", "--out", "{dir}/e", "--format", "hf"), "--lora", "run"),
    (("plan", "gpt-tiny"), "--device", None),
    (("bench", "optim", "--out", "{dir}/bench"), "--task", None),
    (("bench", "optim", "--out", "{dir}/bench", "--task", "mlp", "--steps", "1"), "--optimizers", None),
    (("prepare", "{dir}/in", *hc.PREP_OUT), "--kind", None),
    (("prepare", "{dir}/in", *hc.PREP_OUT), "--normalize", None),
    (("prepare", "{dir}/in", *hc.PREP_OUT), "--shard", None),
]


@st.composite
def subcommand_argument(draw) -> hc.Case:
    """A bad value for one flag of one subcommand: below or above its range, NaN/Inf, not a number,
    or an unknown name."""
    if draw(st.integers(0, len(FLAGS) + len(CHOICES) - 1)) < len(FLAGS):
        head, flag, kind, low, high, needs = draw(st.sampled_from(FLAGS))
        options = [st.just("x" + draw(NAMES))]
        if kind is int:
            options.append(st.integers(-10**6, low - 1).map(str))
            options.append(st.just("1.5"))
        else:
            below = st.floats(-1e6, -1e-6) if low == 0.0 else st.floats(-1e6, 0.0)
            options += [st.sampled_from(["nan", "inf", "-inf", "NaN"]), below.map(repr)]
            if high is not None:
                options.append(st.floats(high, 1e6, exclude_min=True).map(repr))
        value = draw(st.one_of(options))
        expected = (flag, flag[2:].replace("-", "_"))  # the flag, or the setting it fills (prepare)
    else:
        head, flag, needs = draw(st.sampled_from(CHOICES))
        value = "x" + draw(NAMES) + ("/0" if flag == "--shard" else "")
        if flag == "--shard":
            value = draw(st.sampled_from(["3/2", "-1/4", "0/0", "a/b", "1", "2/2"]))
        expected = (flag, value)
    files = hc.TEXT if head[0] == "prepare" else ()
    return hc.Case(f"{' '.join(head[:2])} {flag} {value}", "fuzz: arguments", (*head, flag, value), expected, files,
                   needs=(needs,) if needs else ())
