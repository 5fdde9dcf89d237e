"""Guard rails: a NaN loss or a loss spike is caught in the step it happens and handled as
configured (skip, roll back with a lower lr, stop); faults are planted with SCALETRAIN_FAULT."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import FAST, run_main

BASE = [*FAST, "train.max_steps=8", "train.eval_every=0", "log.every=1", "log.sample_tokens=0",
        "log.tensorboard=false", "train.final_eval_batches=1", "schedule.name=constant",
        "schedule.warmup_steps=0"]


def _run(tmp_path, monkeypatch, cache_dir, name, fault, *extra):
    monkeypatch.setenv("SCALETRAIN_FAULT", fault)
    from scaletrain.parallel import faults

    faults._fired.clear()
    code, out, err = run_main("train", "gpt-tiny", *BASE, f"data.cache_dir={cache_dir}",
                              f"train.run_dir={tmp_path / name}", *extra)
    return code, out + err, tmp_path / name


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_nan_loss_is_skipped_and_the_run_finishes(tmp_path, monkeypatch, cache_dir):
    code, out, run = _run(tmp_path, monkeypatch, cache_dir, "skip", "nan:step=4")
    assert code == 0, out
    assert "step 4: loss is nan; update skipped" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 8 and torch.isfinite(torch.tensor(summary["train_loss"]))
    train = [r for r in _records(run) if r.get("split") == "train"]
    assert [r["step"] for r in train if r.get("skipped_steps")] == [4, 5, 6, 7, 8]  # a running count
    assert all(torch.isfinite(w).all() for w in load_file(run / "model.safetensors").values())


def test_skipped_step_leaves_the_weights_of_the_step_before(tmp_path, monkeypatch, cache_dir):
    """With the update of the last step dropped, the final weights equal a 7-step run's."""
    code, out, run = _run(tmp_path, monkeypatch, cache_dir, "last", "nan:step=8", "optim.name=sgd")
    assert code == 0, out
    code, out, ref = _run(tmp_path, monkeypatch, cache_dir, "seven", "", "optim.name=sgd", "train.max_steps=7")
    assert code == 0, out
    a, b = load_file(run / "model.safetensors"), load_file(ref / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rollback_reloads_the_last_checkpoint_with_a_lower_lr(tmp_path, monkeypatch, cache_dir):
    code, out, run = _run(tmp_path, monkeypatch, cache_dir, "rollback", "nan:step=5", "guard.action=rollback",
                          "train.checkpoint_every=2", "guard.lr_factor=0.25")
    assert code == 0, out
    assert "rolled back to step_00000004, learning rate x 0.25" in out
    final = json.loads((run / "checkpoints" / "step_00000008" / "trainer.json").read_text())
    assert final["rollbacks"] == 1 and final["lr_scale"] == 0.25
    lrs = {r["step"]: r["lr"] for r in _records(run) if r.get("split") == "train"}
    assert lrs[8] == pytest.approx(lrs[4] * 0.25)


@pytest.mark.parametrize("saving", [[], ["checkpoint.async_save=true"]], ids=["sync", "async"])
def test_rollback_continues_exactly_from_the_checkpoint(tmp_path, monkeypatch, cache_dir, saving):
    """A transient NaN, rolled back with the lr unchanged, ends where a clean run ends: the
    checkpoint's weights, optimizer state, data position and RNG all came back. With async saves
    the step-4 checkpoint is still being written when step 5 fails: it is put in place first."""
    code, out, run = _run(tmp_path, monkeypatch, cache_dir, "rolled", "nan:step=5", "guard.action=rollback",
                          "train.checkpoint_every=2", "guard.lr_factor=1.0", *saving)
    assert code == 0 and "rolled back to step_00000004" in out, out
    code, out, clean = _run(tmp_path, monkeypatch, cache_dir, "clean", "", "train.checkpoint_every=2")
    assert code == 0, out
    a, b = load_file(run / "model.safetensors"), load_file(clean / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_loss_spike_is_caught(tmp_path, monkeypatch, cache_dir):
    code, out, run = _run(tmp_path, monkeypatch, cache_dir, "spike", "spike:step=7:factor=50",
                          "guard.spike_factor=3")
    assert code == 0, out
    assert "step 7: loss spiked to" in out


def test_stop_ends_the_run_with_the_reason(tmp_path, monkeypatch, cache_dir):
    code, out, run = _run(tmp_path, monkeypatch, cache_dir, "stop", "nan:step=3", "guard.action=stop")
    assert code == 0, out
    assert "step 3: loss is nan; stopping (guard.action=stop)" in out
    assert json.loads((run / "summary.json").read_text())["stopped_by"] == "non_finite_loss"
