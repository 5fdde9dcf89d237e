"""The presets are right on their own runs: mlp-digits reaches 97 % for every seed, each preset's
default run gets no warning from doctor, and `train.max_steps=5` works on every trainable preset.

gpt and llama train for ~5 minutes each: here they run a short version (the preset with fewer
steps); benchmarks/presets.py runs every preset's full default and doctors it (docs/diagnostics.md).
The llama3.x presets are published shapes for `scaletrain plan` on GPUs, not trained on a CPU:
they are left out.
"""

from __future__ import annotations

import pytest

from scaletrain.config.load import load_config, preset_names
from scaletrain.diagnose.doctor import diagnose, load_run
from scaletrain.train.build import build_trainer

TRAINABLE = ["gpt", "gpt-tiny", "mlp-digits", "llama", "llama-tiny"]
PLAN_ONLY = ["llama3.1-8b", "llama3.2-1b"]
QUIET = ["log.trackers=[]", "log.progress=false"]


def warnings_of(run_dir) -> list[tuple[str, str, str]]:
    return [(f.kind, f.severity, f.evidence) for f in diagnose(load_run(run_dir)) if f.severity != "info"]


def test_every_preset_is_trainable_or_plan_only():
    assert sorted(TRAINABLE + PLAN_ONLY) == preset_names()


@pytest.mark.slow  # ~5 s a seed: the whole preset
@pytest.mark.parametrize("seed", range(5))
def test_mlp_digits_reaches_97_percent_with_no_doctor_warning(tmp_path, cache_dir, seed):
    # The preset as it is (it sets one thread itself), only the seed changed.
    cfg = load_config("mlp-digits", [*QUIET, f"train.seed={seed}", f"train.run_dir={tmp_path / 'run'}"])
    summary = build_trainer(cfg).fit()
    assert summary["steps"] == 2000 and summary["val_accuracy"] >= 0.97, summary["val_accuracy"]
    assert warnings_of(tmp_path / "run") == []


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny"])
def test_tiny_presets_default_runs_get_no_doctor_warning(tmp_path, fast, preset):
    build_trainer(load_config(preset, [*fast, *QUIET, f"train.run_dir={tmp_path / 'run'}"])).fit()
    assert warnings_of(tmp_path / "run") == []


@pytest.mark.slow  # prepares the whole embedded corpus once (~1 min), then 150 steps each
@pytest.mark.parametrize("preset", ["gpt", "llama"])
def test_gpt_and_llama_short_runs_get_no_doctor_warning(tmp_path, fast, preset):
    build_trainer(load_config(preset, [*fast, *QUIET, "log.sample_tokens=0", "train.max_steps=150",
                                       "train.eval_every=50", "train.eval_batches=4", "train.final_eval_batches=8",
                                       "log.every=10", f"train.run_dir={tmp_path / 'run'}"])).fit()
    assert warnings_of(tmp_path / "run") == []


@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if p in ("gpt", "llama") else p
                                    for p in TRAINABLE])
def test_five_steps_work_on_every_trainable_preset(tmp_path, fast, run_main, preset):
    run = tmp_path / "run"
    # Two final evaluation batches: the gpt and llama presets evaluate the whole validation split at
    # the end (~50 s each on one thread in fp32), which is not what this test is about.
    code, out, err = run_main("train", preset, *fast, *QUIET, "log.sample_tokens=0", "train.max_steps=5",
                              "train.final_eval_batches=2", f"train.run_dir={run}")
    assert code == 0, err[-2000:]
    assert out.startswith("done: ") and (run / "model.safetensors").is_file()
    warmup = load_config(preset).schedule.warmup_steps
    if warmup >= 5:  # the preset's warm-up gave way, and said so in one line
        assert err.splitlines()[0] == (f"schedule.warmup_steps: {warmup} from the preset {preset} shortened "
                                       "to 0 to fit train.max_steps=5")
