"""Hostile and careless configs: YAML beyond the reader's limits (alias bombs, deep nesting,
duplicate keys, oversize files) and values the schema must refuse (non-finite numbers in every
numeric field, out-of-range counts, seeds, nproc beyond this machine). Each ends in one short
UserError line that names the file or key; none expands, recurses or prints the hostile value."""

from __future__ import annotations

import typing

import annotated_types as at
import pytest
from pydantic import BaseModel

from scaletrain.config import load, schema
from scaletrain.config.load import load_config
from scaletrain.config.schema import Config
from scaletrain.models.gpt.config import GPTConfig
from scaletrain.models.mlp.config import MLPConfig
from scaletrain.errors import UserError


def error_of(source, overrides=(), **kwargs) -> str:
    with pytest.raises(UserError) as info:
        load_config(source, list(overrides), **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def bomb(levels: int = 30, width: int = 10) -> str:
    """Billion laughs as a flow sequence: `width**levels` values once expanded (10**30 here)."""
    parts = ["&a0 [" + ", ".join(["lol"] * width) + "]"]
    parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


# ---- YAML limits -----------------------------------------------------------------------------


def test_alias_bomb_in_a_file_is_refused_unexpanded(tmp_path):
    path = write(tmp_path, "bomb.yaml", f"optim:\n  lr_multipliers: {bomb()}\n")
    assert error_of(path) == f"config {path}: its aliases expand to more than 50,000 values"


@pytest.mark.parametrize("key", ["optim.lr_multipliers", "log.sample_prompt", "optim.betas"])
def test_alias_bomb_in_an_override_is_refused_not_read_as_text(key):
    # A string field would take unreadable YAML as text: the bomb must not pass as a string either.
    assert error_of("gpt-tiny", [f"{key}={bomb()}"]) == f"override {key!r}: its aliases expand to more than 50,000 values"


def test_merge_key_bomb_is_refused(tmp_path):
    lines = ["a0: &a0 {k: 1}"] + [f"a{i}: &a{i} {{<<: [{', '.join([f'*a{i - 1}'] * 10)}]}}" for i in range(1, 20)]
    assert "aliases expand" in error_of(write(tmp_path, "merge.yaml", "\n".join(lines) + "\n"))


def test_an_alias_that_contains_itself_is_refused(tmp_path):
    assert "refers to its own anchor at line 2" in error_of(write(tmp_path, "rec.yaml", "name: x\nk: &a [*a]\n"))


def test_alias_chains_count_their_depth(tmp_path):
    text = "k0: &a0 [1]\n" + "".join(f"k{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 200))
    assert "nest deeper than 64 levels" in error_of(write(tmp_path, "chain.yaml", text))


def test_deep_nesting_is_an_error_not_a_recursion_error(tmp_path):
    deep = "[" * 20_000 + "]" * 20_000
    path = write(tmp_path, "deep.yaml", f"train:\n  max_steps: {deep}\n")
    assert error_of(path) == f"config {path}: nested deeper than 64 levels at line 2"
    assert error_of("gpt-tiny", [f"optim.betas={deep}"]) == "override 'optim.betas': nested deeper than 64 levels at line 1"
    dashes = write(tmp_path, "dashes.yaml", "- " * 20_000 + "1\n")  # block sequences, one per level
    assert "nested deeper than 64 levels" in error_of(dashes)


def test_too_many_values_are_refused(tmp_path):
    path = write(tmp_path, "many.yaml", "optim:\n  betas: [" + "0.5, " * 60_000 + "0.5]\n")
    assert "more than 50,000 values" in error_of(path)


@pytest.mark.parametrize("text,key,line", [
    ("optim:\n  lr: 1e-3\n  betas: [0.9, 0.95]\n\n\n\n  lr: 2e-3\n", "lr", 7),  # nested
    ("optim:\n  lr: 1e-3\ntrain:\n  max_steps: 3\noptim:\n  eps: 1e-3\n", "optim", 5),  # a whole section
    ("optim:\n  lr_multipliers: {wte: 0.5, wte: 2}\n", "wte", 2),  # in a flow mapping, a level deeper
])
def test_duplicate_keys_name_the_key_and_line(tmp_path, text, key, line):
    path = write(tmp_path, "dup.yaml", text)
    assert error_of(path) == f"config {path}: duplicate key {key!r} at line {line}"


def test_duplicate_key_in_an_override_value():
    assert error_of("gpt-tiny", ["optim.lr_multipliers={a: 1, a: 2}"]) == (
        "override 'optim.lr_multipliers': duplicate key 'a' at line 1")


def test_merge_keys_and_anchors_still_work(tmp_path):
    # A key written after a merge (`<<`) overrides the merged one: that is YAML, not a duplicate.
    text = "optim:\n  <<: {lr: 0.01, eps: 1.0e-6}\n  lr: 0.02\n  betas: &b [0.8, 0.9]\n  lion:\n    betas: *b\n"
    cfg = load_config(write(tmp_path, "anchors.yaml", text))
    assert (cfg.optim.lr, cfg.optim.eps, cfg.optim.lion.betas) == (0.02, 1e-6, [0.8, 0.9])


def test_oversize_and_binary_files_are_refused_without_reading_them_whole(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# padding\n" * 200_000)  # 2 MB of comments: valid YAML, but no config is that large
    assert error_of(str(big)) == f"config {big}: larger than 1,048,576 bytes (a config is a few KB)"
    assert "larger than 65,536 bytes" in error_of("gpt-tiny", ["log.sample_prompt=" + "x" * 70_000])


def test_huge_integer_literals_are_refused():
    assert "an integer of 5000 characters" in error_of("gpt-tiny", ["train.max_steps=" + "1" * 5000])


@pytest.mark.parametrize("value", ["!!float abc", "!!timestamp x", "!!int x", "a\x00b", "[1, 2"])
def test_unreadable_override_values_become_text_and_fail_on_the_key(value):
    assert error_of("gpt-tiny", [f"optim.lr={value}"]).startswith("optim.lr: input should be")


def test_error_lines_cut_long_values():
    message = error_of("gpt-tiny", ["train.max_steps=" + "x" * 10_000])
    assert message.startswith("train.max_steps: input should be a valid integer (got 'xxx") and "..." in message
    assert "..." in error_of("gpt-tiny", ["train.resume=/nonexistent/" + "y" * 5000])  # too long for the OS too


def test_the_float_spelling_without_a_dot_is_kept():
    assert load.parse_yaml("lr: 3e-4", "x") == {"lr": 3e-4}


# ---- non-finite numbers: every numeric field -------------------------------------------------


def _plain(annotation):
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


def _numeric(annotation) -> str | None:
    """'scalar', 'list' or 'dict' for a field holding numbers (also inside Optional), else None."""
    container = _plain(annotation)
    if typing.get_origin(container) in (list, dict):
        inner = _plain(typing.get_args(container)[-1])
        return {list: "list", dict: "dict"}[typing.get_origin(container)] if inner in (int, float) else None
    args = [_plain(a) for a in (typing.get_args(container) or (container,)) if a is not type(None)]
    if args and all(a in (int, float) or typing.get_origin(a) is typing.Literal for a in args) \
            and any(a in (int, float) for a in args):
        return "scalar"
    return None


def numeric_fields(model: type[BaseModel], prefix: str):
    """(key, kind, field) for every numeric field, nested sections included (optim.lion.betas...)."""
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from numeric_fields(field.annotation, key)
        elif kind := _numeric(field.annotation):
            yield key, kind, field


SECTIONS = {"gpt-tiny": [(n, f.annotation) for n, f in Config.model_fields.items() if n != "model"] + [("model", GPTConfig)],
            "mlp-digits": [("model", MLPConfig)]}
FIELDS = [(preset, key, kind, field) for preset, sections in SECTIONS.items() for name, cls in sections
          if isinstance(cls, type) and issubclass(cls, BaseModel) for key, kind, field in numeric_fields(cls, name)]


def test_the_walk_sees_every_kind_of_numeric_field():
    keys = {key for _, key, _, _ in FIELDS}
    assert {"optim.lr", "optim.lion.betas", "optim.lr_multipliers", "model.hidden", "train.early_stopping",
            "parallel.timeout_seconds", "guard.spike_factor", "data.seq_len"} <= keys
    assert len(keys) > 60


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400"])
def test_non_finite_numbers_are_refused_in_every_numeric_field(value):
    for preset, key, kind, _ in FIELDS:
        item = {"scalar": value, "list": f"[{value}, {value}]", "dict": f"{{x: {value}}}"}[kind]
        message = error_of(preset, [f"{key}={item}"])
        assert message.startswith(f"{key}") and "unknown key" not in message, (key, message)


@pytest.mark.parametrize("override,key", [
    ("optim.lr=1e400", "optim.lr"), ("optim.eps=.inf", "optim.eps"), ("train.grad_clip=.nan", "train.grad_clip"),
    ("train.max_minutes=.inf", "train.max_minutes"), ("guard.spike_factor=.inf", "guard.spike_factor"),
    ("optim.lr_multipliers={wte: .inf}", "optim.lr_multipliers.wte"), ("optim.lion.betas=[0.5, .nan]", "optim.lion.betas.1"),
])
def test_float_fields_say_finite(override, key):
    assert error_of("gpt-tiny", [override]).startswith(f"{key}: input should be a finite number (got ")


def test_non_finite_mixture_weight(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")  # the schema only asks that the file exists
    message = error_of("gpt-tiny", [f"data.mixture=[{{path: {tmp_path}, weight: .inf}}]"])
    assert message.startswith("data.mixture.0.weight: input should be a finite number")


@pytest.mark.parametrize("preset,key", [(p, k) for p, k, kind, f in FIELDS
                                        if kind == "scalar" and int in map(_plain, typing.get_args(f.annotation) + (f.annotation,))])
def test_every_integer_field_fits_int64(preset, key):
    assert error_of(preset, [f"{key}={2**63}"]).startswith(key)


# ---- bounds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("override,key", [
    ("train.seed=-1", "train.seed"), (f"train.seed={2**63}", "train.seed"),
    (f"data.seq_len={2**20 + 1}", "data.seq_len"), (f"train.max_steps={10**9 + 1}", "train.max_steps"),
    (f"train.batch_size={2**20 + 1}", "train.batch_size"), (f"train.grad_accum={2**16 + 1}", "train.grad_accum"),
    (f"data.vocab_size={2**21 + 1}", "data.vocab_size"), (f"model.d_model={2**17 + 1}", "model.d_model"),
    (f"model.n_layer={2**12 + 1}", "model.n_layer"), (f"train.eval_batches={10**9 + 1}", "train.eval_batches"),
    (f"train.threads={2**12 + 1}", "train.threads"), (f"log.sample_tokens={2**16 + 1}", "log.sample_tokens"),
    (f"parallel.nnodes={2**16 + 1}", "parallel.nnodes"), ("parallel.timeout_seconds=1e12", "parallel.timeout_seconds"),
    ("optim.muon.ns_steps=101", "optim.muon.ns_steps"), (f"train.checkpoint_every={2**70}", "train.checkpoint_every"),
])
def test_counts_have_upper_bounds(override, key):
    assert error_of("gpt-tiny", [override]).startswith(f"{key}: input should be")


def test_tokens_per_micro_batch_are_bounded():
    message = error_of("gpt-tiny", [f"train.batch_size={2**16}", f"data.seq_len={2**16}"])
    assert message.startswith("train.batch_size: 65536 x data.seq_len 65536 tokens per micro-batch")
    assert load_config("gpt-tiny", ["train.seed=0", f"train.seed={2**63 - 1}"]).train.seed == 2**63 - 1


def _machine_limit() -> int:
    import torch

    return max(schema._usable_cores(), torch.cuda.device_count() if torch.cuda.is_available() else 0)


def test_nproc_beyond_this_machine_needs_oversubscribe():
    n = _machine_limit() + 1
    items = ["parallel.strategy=ddp", f"parallel.nproc={n}"]
    message = error_of("gpt-tiny", items, this_machine=True)
    assert message.startswith(f"parallel.nproc: {n} processes but this machine has ") and "parallel.oversubscribe=true" in message
    assert load_config("gpt-tiny", [*items, "parallel.oversubscribe=true"], this_machine=True).parallel.nproc == n
    assert load_config("gpt-tiny", items).parallel.nproc == n  # a run's config read elsewhere (eval, plan)
    assert error_of("gpt-tiny", ["parallel.strategy=ddp", "parallel.nproc=4097", "parallel.oversubscribe=true"],
                    this_machine=True).startswith("parallel.nproc: input should be less than or equal to 4096")


def test_empty_sample_prompt():
    assert error_of("gpt-tiny", ["log.sample_prompt=''"]).startswith("log.sample_prompt: empty")
    assert load_config("gpt-tiny", ["log.sample_prompt=''", "log.sample_tokens=0"]).log.sample_prompt == ""


@pytest.mark.parametrize("pattern", ["/etc/*", "../*", "a/../../b/*.txt", "~/x/*", "''"])
def test_data_pattern_stays_under_data_path(pattern):
    assert error_of("gpt-tiny", [f"data.pattern={pattern}"]).startswith("data.pattern: ")


@pytest.mark.parametrize("pattern", ["**/*.txt", "a..b/*.md", "src/**/*.py"])
def test_data_pattern_relative_globs_pass(pattern):
    assert load_config("gpt-tiny", [f"data.pattern={pattern}"]).data.pattern == pattern


def test_text_that_is_not_utf8_is_refused_by_name():
    assert error_of("gpt-tiny", ["train.run_dir=runs/x\udcff"]) == "train.run_dir: not valid UTF-8 text"


@pytest.mark.parametrize("name", ["gpt", "gpt-tiny", "mlp-digits"])
def test_presets_check_their_machine_too(name):
    assert load_config(name, this_machine=True).parallel.nproc == 1


def test_bounds_are_in_the_field_metadata():
    """The reliability fuzz (tests/reliability/bad_inputs.py) draws out-of-range values from the
    fields' own bounds: the new upper bounds must be metadata, not hidden in validators."""
    seq_len = schema.DataConfig.model_fields["seq_len"]
    assert any(isinstance(m, at.Le) and m.le == schema.MAX_SEQ_LEN for m in seq_len.metadata)


@pytest.mark.parametrize("key", ["train.run_dir", "data.cache_dir"])
def test_folders_under_an_unknown_users_home(key):
    assert error_of("gpt-tiny", [f"{key}=~nosuchuser-scaletrain/x"]) == (
        f"{key}: no home folder for the user in '~nosuchuser-scaletrain/x'")


def test_config_file_under_an_unknown_users_home():
    assert "no such file and not a preset" in error_of("~nosuchuser-scaletrain/x.yaml")
