"""One train step: the trainer, `verify` (which records runs through the trainer) and `profile` all
run the step `scaletrain.train.step.make_train_step` builds. A spy put in its place sees every step
they take."""

from __future__ import annotations

import json

import pytest

from scaletrain.config.load import load_config
from scaletrain.diagnose import profile as profile_module
from scaletrain.diagnose import verify
from scaletrain.train import step as step_module
from scaletrain.train import trainer as trainer_module

TINY = ["train.max_steps=2", "train.eval_every=0", "train.final_eval_batches=1", "log.sample_tokens=0",
        "log.tensorboard=false", "schedule.name=constant", "schedule.warmup_steps=0", "train.batch_size=4"]


@pytest.fixture
def spy(monkeypatch):
    calls = []
    real = step_module.make_train_step

    def make_train_step(*args, **kwargs):
        step = real(*args, **kwargs)
        timed = kwargs.get("phase") is not None

        def spied(*a, **k):
            calls.append(timed)
            return step(*a, **k)

        return spied

    # The trainer imports the function by name; profile calls it through the module.
    monkeypatch.setattr(step_module, "make_train_step", make_train_step)
    monkeypatch.setattr(trainer_module, "make_train_step", make_train_step)
    return calls


def test_verify_records_its_runs_through_the_one_step(tmp_path, fast, spy):
    out = tmp_path / "recorded"
    out.mkdir()
    verify.record_run("gpt-tiny", [*fast, *TINY, f"train.run_dir={tmp_path / 'run'}"], out)
    assert len(spy) == 2
    assert sorted(p.name for p in out.iterdir()) == ["step_00001.safetensors", "step_00002.safetensors"]


def test_profile_times_the_one_step(tmp_path, fast, spy):
    cfg = load_config("gpt-tiny", [*fast, *TINY])
    report = profile_module.profile(cfg, steps=2, warmup=1, out=tmp_path / "prof")
    assert spy == [True, True, True]  # warm-up + profiled steps, each with profile's phases
    phases = report["phases_seconds_per_step"]
    assert phases["forward"] > 0 and phases["backward"] > 0 and phases["optimizer"] > 0
    assert json.loads((tmp_path / "prof" / "profile.json").read_text())["steps"] == 2
