"""Config loading: presets, overrides, and one clear UserError naming the key for every bad input."""

from __future__ import annotations

import pytest

from scaletrain.config.load import load_config, preset_names, to_yaml
from scaletrain.config.schema import Config
from scaletrain.models.gpt.config import GPTConfig
from scaletrain.models.mlp.config import MLPConfig
from scaletrain.errors import UserError


def error_of(source, overrides=()) -> str:
    with pytest.raises(UserError) as info:
        load_config(source, list(overrides))
    message = str(info.value)
    assert "\n" not in message, f"a UserError must be one line: {message!r}"
    return message


# ---- presets ---------------------------------------------------------------------------------


def test_preset_names():
    assert {"gpt", "gpt-tiny", "mlp-digits"} <= set(preset_names())


@pytest.mark.parametrize("name,model_cls,kind", [
    ("gpt", GPTConfig, "text"), ("gpt-tiny", GPTConfig, "text"), ("mlp-digits", MLPConfig, "images"),
])
def test_presets_load(name, model_cls, kind):
    cfg = load_config(name)
    assert isinstance(cfg, Config)
    assert isinstance(cfg.model, model_cls)
    assert cfg.data.kind == kind
    assert cfg.name == name


@pytest.mark.parametrize("name", ["gpt", "gpt-tiny", "mlp-digits"])
def test_preset_values_come_from_the_yaml(name):
    import yaml
    from importlib import resources

    raw = yaml.safe_load((resources.files("scaletrain") / "configs" / f"{name}.yaml").read_text())
    dumped = load_config(name).model_dump()
    for section, values in raw.items():
        for key, value in values.items():
            assert dumped[section][key] == pytest.approx(value), f"{section}.{key}"


def test_tiny_preset_is_tiny():
    tiny = load_config("gpt-tiny")
    assert (tiny.model.n_layer, tiny.model.d_model, tiny.data.vocab_size, tiny.train.max_steps) == (2, 64, 512, 40)


def test_default_source_is_the_gpt_preset():
    assert load_config(None).model_dump() == load_config("gpt").model_dump()


def test_overrides_are_applied_and_typed():
    cfg = load_config("gpt-tiny", ["train.max_steps=7", "model.dropout=0.25", "optim.betas=[0.8, 0.9]",
                                   "train.run_dir=some/dir", "data.max_bytes=", "log.tensorboard=false"])
    assert cfg.train.max_steps == 7
    assert cfg.model.dropout == 0.25
    assert cfg.optim.betas == [0.8, 0.9]
    assert cfg.train.run_dir == "some/dir"
    assert cfg.data.max_bytes is None  # an empty value means null
    assert cfg.log.trackers == []


# ---- every kind of bad input: UserError naming the key ---------------------------------------


@pytest.mark.parametrize("source,overrides,expected", [
    # unknown keys
    ("gpt-tiny", ["bogus=1"], "bogus: unknown key"),
    ("gpt-tiny", ["train.bogus=1"], "train.bogus: unknown key"),
    ("gpt-tiny", ["train.max_step=5"], "train.max_step: unknown key"),
    ("mlp-digits", ["model.n_layer=3"], "model.n_layer: unknown key"),
    ("gpt-tiny", ["model.hidden=[3]"], "model.hidden: unknown key"),
    # wrong types (strict: no silent "5" -> 5, True -> 1)
    ("gpt-tiny", ["train.max_steps=abc"], "train.max_steps"),
    ("gpt-tiny", ["train.max_steps='5'"], "train.max_steps"),
    ("gpt-tiny", ["train.max_steps=true"], "train.max_steps"),
    ("gpt-tiny", ["model.n_head=1.5"], "model.n_head"),
    ("gpt-tiny", ["optim.lr=abc"], "optim.lr"),
    ("gpt-tiny", ["optim.betas=[0.9]"], "optim.betas"),
    ("gpt-tiny", ["optim.betas=[0.9, 0.9, 0.9]"], "optim.betas"),
    ("gpt-tiny", ["train=3"], "train"),
    ("gpt-tiny", ["train.precision=fp8"], "train.precision"),
    ("gpt-tiny", ["train.early_stopping=true"], "train.early_stopping"),
    # impossible values
    ("gpt-tiny", ["optim.lr=-1"], "optim.lr"),
    ("gpt-tiny", ["optim.lr=0"], "optim.lr"),
    ("gpt-tiny", ["train.batch_size=0"], "train.batch_size"),
    ("gpt-tiny", ["data.val_fraction=1.0"], "data.val_fraction"),
    ("gpt-tiny", ["data.val_fraction=0"], "data.val_fraction"),
    ("gpt-tiny", ["data.train_fraction=1.5"], "data.train_fraction"),
    ("gpt-tiny", ["data.vocab_size=100"], "data.vocab_size"),
    ("gpt-tiny", ["train.early_stopping=-2"], "train.early_stopping"),
    ("gpt-tiny", ["schedule.warmup_steps=40"], "schedule.warmup_steps"),
    ("gpt-tiny", ["train.max_steps=10", "schedule.warmup_steps=11"], "schedule.warmup_steps"),
    ("gpt-tiny", ["model.d_model=65"], "model.d_model"),
    ("gpt-tiny", ["model.dropout=1.0"], "model.dropout"),
    ("gpt-tiny", ["parallel.strategy=zero3"], "parallel.strategy"),
    ("gpt-tiny", ["parallel.nproc=0"], "parallel.nproc"),
    ("gpt-tiny", ["parallel.nnodes=2"], "parallel.nnodes"),
    ("gpt-tiny", ["parallel.straggler_factor=1"], "parallel.straggler_factor"),
    # missing files
    ("gpt-tiny", ["data.path=/nonexistent/scaletrain-data"], "data.path"),
    ("gpt-tiny", ["train.resume=/nonexistent/scaletrain-ckpt"], "train.resume"),
    # unknown optimizer
    ("gpt-tiny", ["optim.name=adamx"], "optim.name"),
    # malformed overrides
    ("gpt-tiny", ["train.max_steps"], "train.max_steps"),
    ("gpt-tiny", ["=3"], "'=3'"),
    ("gpt-tiny", ["train.=3"], "train."),
    ("gpt-tiny", [".max_steps=3"], ".max_steps"),
    ("gpt-tiny", ["train.max_steps.x=3"], "train.max_steps"),
    ("gpt-tiny", ["train.max_steps=[1"], "train.max_steps"),
])
def test_bad_input_names_the_key(source, overrides, expected):
    message = error_of(source, overrides)
    assert message.startswith(expected) or f" {expected}" in message or f"'{expected}" in message, message


def test_error_messages_say_what_is_wrong():
    assert "greater than 0" in error_of("gpt-tiny", ["optim.lr=-1"])
    assert "(got 'abc')" in error_of("gpt-tiny", ["train.max_steps=abc"])
    assert "divisible by model.n_head" in error_of("gpt-tiny", ["model.d_model=65"])
    assert "below train.max_steps (40)" in error_of("gpt-tiny", ["schedule.warmup_steps=40"])
    known = error_of("gpt-tiny", ["optim.name=adamx"])
    assert "'adamx'" in known and "adamw" in known
    assert "expected section.key=value" in error_of("gpt-tiny", ["=3"])
    # A value YAML cannot read is kept as a string, so the type check names the key and the value.
    assert error_of("gpt-tiny", ["train.max_steps=[1"]) == (
        "train.max_steps: input should be a valid integer (got '[1')")
    assert load_config("gpt-tiny", ["data.pattern=**/*.txt"]).data.pattern == "**/*.txt"


def test_missing_config_file_and_unknown_preset(tmp_path):
    missing = error_of(str(tmp_path / "nope.yaml"))
    assert "nope.yaml" in missing and "no such file" in missing and "gpt-tiny" in missing
    unknown = error_of("gpt-huge")
    assert "'gpt-huge'" in unknown and "not a preset" in unknown


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_steps: [1, 2\n")
    message = error_of(str(bad))
    assert str(bad) in message and "not valid YAML" in message


def test_yaml_file_whose_top_level_is_not_a_mapping(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    assert "mapping" in error_of(str(bad))


def test_unknown_key_in_a_yaml_file(tmp_path):
    f = tmp_path / "cfg.yaml"
    f.write_text("model:\n  name: gpt\n  n_layers: 2\n")
    assert error_of(str(f)).startswith("model.n_layers: unknown key")


# ---- accepted spellings ----------------------------------------------------------------------


def test_exponent_without_dot_is_a_float_in_overrides_and_files(tmp_path):
    cfg = load_config("gpt-tiny", ["optim.lr=3e-4", "optim.eps=1e-10"])
    assert type(cfg.optim.lr) is float and cfg.optim.lr == 3e-4
    assert cfg.optim.eps == 1e-10
    f = tmp_path / "exp.yaml"
    f.write_text("optim:\n  lr: 3e-4\n  weight_decay: 1E-2\n")
    cfg = load_config(str(f))
    assert cfg.optim.lr == 3e-4 and cfg.optim.weight_decay == 0.01
    assert cfg.name == "exp"  # the file's stem names the run


def test_early_stopping_false_or_patience():
    assert load_config("gpt-tiny", ["train.early_stopping=false"]).train.early_stopping is False
    assert load_config("gpt-tiny", ["train.early_stopping=3"]).train.early_stopping == 3


def test_resume_true_means_auto(tmp_path):
    assert load_config("gpt-tiny", ["train.resume=true"]).train.resume == "auto"
    assert load_config("gpt-tiny", ["train.resume=auto"]).train.resume == "auto"
    assert load_config("gpt-tiny", [f"train.resume={tmp_path}"]).train.resume == str(tmp_path)


def test_existing_data_path_is_accepted(tmp_path):
    assert load_config("gpt-tiny", [f"data.path={tmp_path}"]).data.path == str(tmp_path)


# ---- round trip ------------------------------------------------------------------------------


@pytest.mark.parametrize("name,overrides", [
    ("gpt-tiny", ["optim.lr=3e-4", "train.early_stopping=3", "optim.lr_multipliers={'wte.*': 0.5}",
                  "model.d_ff=96", "train.max_minutes=1.5", "log.sample_prompt='x: 1'"]),
    ("mlp-digits", ["model.hidden=[32]", "train.resume=auto"]),
    ("gpt", []),
])
def test_resolved_config_round_trips_through_yaml(tmp_path, name, overrides):
    cfg = load_config(name, overrides)
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    again = load_config(str(path))
    assert again.model_dump() == cfg.model_dump()
    assert again.name == name  # kept from the dump, not replaced by the file's folder name


def test_the_config_is_composed_from_the_registries_without_torch(tmp_path):
    """The optimizer and model-family registries are the config's source (one line per optimizer
    or family) and load without torch, so bad input is reported before torch is imported."""
    import subprocess
    import sys

    code = ("import sys, scaletrain.config.schema as s; from scaletrain.optim.registry import OPTIMIZERS; "
            "from scaletrain.models import FAMILIES; assert 'torch' not in sys.modules, 'torch imported'; "
            "print(len(OPTIMIZERS), len(FAMILIES))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    from scaletrain.config.schema import OptimConfig
    from scaletrain.models import FAMILIES
    from scaletrain.optim.registry import OPTIMIZERS

    declared = {name for name, spec in OPTIMIZERS.items() if spec.options is not None}
    assert declared <= set(OptimConfig.model_fields)  # each declared options section is `optim.<name>`
    assert set(OPTIMIZERS) - declared <= {"gd", "sgd", "momentum", "nesterov", "adam", "adamw"}
    assert {"gpt", "mlp"} <= set(FAMILIES)
    folder = tmp_path / "hf-model"  # model.name=hf needs a model folder (a config.json)
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    required = {"hf": {"path": str(folder)}}
    for name in FAMILIES:  # `model.name=<family>` picks the family's own section
        section = FAMILIES[name].config
        assert type(Config.model_validate({"model": {"name": name, **required.get(name, {})}, "data": {
            "kind": "text" if section.task == "language_modeling" else "images"}}).model) is section


def test_early_stopping_zero_is_refused():
    assert "early_stopping" in error_of("gpt-tiny", ["train.early_stopping=0"])


@pytest.mark.parametrize("preset,warmup", [("gpt", 100), ("gpt-tiny", 5), ("llama", 100), ("llama-tiny", 5)])
def test_a_preset_warmup_gives_way_to_a_short_max_steps(said, preset, warmup):
    cfg = load_config(preset, ["train.max_steps=5"])
    assert (cfg.train.max_steps, cfg.schedule.warmup_steps) == (5, 0)
    assert said == [f"schedule.warmup_steps: {warmup} from the preset {preset} shortened to 0 to fit train.max_steps=5"]


def test_the_warmup_shrinks_in_proportion_and_only_on_a_conflict(said, tmp_path):
    (tmp_path / "long.yaml").write_text("schedule: {warmup_steps: 100}\ntrain: {max_steps: 1350}\n")
    assert load_config(str(tmp_path / "long.yaml"), ["train.max_steps=100"]).schedule.warmup_steps == 7  # 100 x 100 / 1350
    assert load_config(str(tmp_path / "long.yaml"), ["train.max_steps=101"]).schedule.warmup_steps == 100  # no conflict
    (tmp_path / "mine.yaml").write_text("schedule: {warmup_steps: 30}\ntrain: {max_steps: 60}\n")
    assert load_config(str(tmp_path / "mine.yaml"), ["train.max_steps=20"]).schedule.warmup_steps == 10
    assert said[-1] == f"schedule.warmup_steps: 30 from the config {tmp_path / 'mine.yaml'} shortened to 10 to fit " \
                       "train.max_steps=20"
    assert len(said) == 2


@pytest.mark.parametrize("overrides", [["train.max_steps=5", "schedule.warmup_steps=5"],
                                       ["schedule.warmup_steps=40"], ["train.max_steps=5", "schedule.warmup_steps=9"]])
def test_an_override_against_an_override_or_the_file_stays_an_error(said, overrides):
    with pytest.raises(UserError, match=r"schedule.warmup_steps: \d+ must be below train.max_steps"):
        load_config("gpt-tiny", overrides)
    assert said == []


def test_trackers_list(tmp_path):
    assert load_config("gpt-tiny").log.trackers == ["tensorboard"]
    assert load_config("gpt-tiny", ["log.trackers=[mlflow, wandb, trackio]"]).log.trackers == ["mlflow", "wandb", "trackio"]
    # log.tensorboard (configs written before log.trackers) switches TensorBoard off or on
    assert load_config("gpt-tiny", ["log.trackers=[mlflow]", "log.tensorboard=true"]).log.trackers == ["tensorboard", "mlflow"]
    (tmp_path / "old.yaml").write_text("log: {tensorboard: false, every: 5}\n")
    assert load_config(str(tmp_path / "old.yaml")).log.trackers == []
    for bad, expected in (("log.trackers=[comet]", "log.trackers.0: input should be"),
                          ("log.trackers=[wandb, wandb]", "log.trackers: wandb is listed twice"),
                          ("log.tensorboard=maybe", "log.tensorboard: expected true or false")):
        with pytest.raises(UserError, match=expected):
            load_config("gpt-tiny", [bad])
