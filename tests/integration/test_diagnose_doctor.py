"""doctor on real runs with planted pathologies: each is found with the right finding, and a
healthy run gets no warning. The faults are planted through SCALETRAIN_FAULT
(scaletrain.parallel.faults), read at each step, so monkeypatch.setenv reaches an in-process run."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from scaletrain.config.load import load_config
from scaletrain.diagnose.doctor import diagnose, load_run
from scaletrain.train.build import build_trainer

QUIET = ["log.sample_tokens=0", "log.tensorboard=false"]


def train(fast, run_dir, *overrides):
    cfg = load_config("gpt-tiny", [*fast, *QUIET, f"train.run_dir={run_dir}", *overrides])
    return build_trainer(cfg).fit()


def problems(run_dir, **kw):
    return {(f.kind, f.severity) for f in diagnose(load_run(run_dir), **kw) if f.severity != "info"}


def test_healthy_run_gets_no_warning(tmp_path, fast, run_main):
    train(fast, tmp_path / "run")
    assert problems(tmp_path / "run") == set()
    code, out, _ = run_main("doctor", tmp_path / "run", "--json")
    assert code == 0
    assert all(f["severity"] == "info" for f in json.loads(out))


@pytest.mark.slow  # ~14 s: 150 steps and 10 evaluations
def test_overfitting_on_a_tiny_slice(tmp_path, fast, run_main):
    # 1 % of the training windows, no weight decay, 150 steps: memorized by step ~60.
    train(fast, tmp_path / "run", "data.train_fraction=0.01", "train.max_steps=150", "train.eval_every=15",
          "optim.weight_decay=0", "schedule.name=constant", "train.final_eval_batches=4")
    assert ("overfitting", "warning") in problems(tmp_path / "run")
    code, out, _ = run_main("doctor", tmp_path / "run")
    assert code == 0 and "[warning] overfitting" in out and "train.early_stopping" in out


def test_divergence_at_a_huge_learning_rate(tmp_path, fast):
    train(fast, tmp_path / "run", "optim.lr=0.5", "train.grad_clip=0", "schedule.name=constant",
          "schedule.warmup_steps=0", "train.eval_every=0", "train.final_eval_batches=2")
    found = problems(tmp_path / "run")
    assert {k for k, _ in found} >= {"divergence", "lr_too_high"}


def test_learning_rate_too_low(tmp_path, fast):
    train(fast, tmp_path / "run", "optim.lr=1e-6", "train.eval_every=0", "train.final_eval_batches=2")
    assert problems(tmp_path / "run") == {("lr_too_low", "warning")}


def test_data_bound_run(tmp_path, fast, monkeypatch):
    # 0.15 s per batch against ~0.05 s of compute per step: the prefetcher cannot hide it.
    monkeypatch.setenv("SCALETRAIN_FAULT", "slow_data:seconds=0.15")
    train(fast, tmp_path / "run", "train.max_steps=20", "train.eval_every=0", "train.final_eval_batches=2")
    assert "data_bound" in {k for k, _ in problems(tmp_path / "run")}


def test_injected_nan_is_survived_and_reported(tmp_path, fast, monkeypatch):
    monkeypatch.setenv("SCALETRAIN_FAULT", "nan:step=4")
    summary = train(fast, tmp_path / "run", "train.max_steps=20", "train.eval_every=0",
                    "train.final_eval_batches=2")
    assert summary["steps"] == 20 and summary["stopped_by"] == "max_steps"
    assert summary["train_loss"] == summary["train_loss"]  # finite: the NaN step was skipped
    (nan,) = [f for f in diagnose(load_run(tmp_path / "run")) if f.kind == "nan"]
    assert nan.severity == "warning" and nan.data["skipped_steps"] == 1


def test_memory_pressure_against_a_small_device(tmp_path, fast, run_main):
    summary = train(fast, tmp_path / "run", "train.max_steps=8", "train.eval_every=0", "train.final_eval_batches=1")
    limit_gb = summary["peak_memory_bytes"] / 0.9 / 1e9  # the peak is 90 % of this
    code, out, _ = run_main("doctor", tmp_path / "run", "--json", "--device-memory", f"{limit_gb:.6f}")
    (f,) = [f for f in json.loads(out) if f["kind"] == "memory_pressure"]
    assert code == 0 and f["severity"] == "warning" and f["data"]["fraction"] == pytest.approx(0.9, abs=1e-3)


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.dist
def test_slowed_rank_is_a_straggler(tmp_path, cache_dir):
    run = tmp_path / "run"
    import os

    env_before = os.environ.get("SCALETRAIN_FAULT")
    os.environ["SCALETRAIN_FAULT"] = "slow_rank:rank=1:seconds=0.1"
    try:
        code, out, err = run_cli("train", "gpt-tiny", "train.threads=1", "log.progress=false", *QUIET,
                                 "train.precision=fp32", f"data.cache_dir={cache_dir}", f"train.run_dir={run}",
                                 "train.max_steps=20", "train.eval_every=0", "train.final_eval_batches=1",
                                 "parallel.strategy=ddp", "parallel.nproc=2", cwd=tmp_path, timeout=300)
    finally:
        if env_before is None:
            os.environ.pop("SCALETRAIN_FAULT")
        else:
            os.environ["SCALETRAIN_FAULT"] = env_before
    assert code == 0, (out + err)[-2000:]
    (f,) = [f for f in diagnose(load_run(run)) if f.kind == "straggler"]
    assert f.severity == "warning" and f.data["ranks"] == [1]
