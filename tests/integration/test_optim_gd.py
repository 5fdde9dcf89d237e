"""optim.name=gd is true full-batch gradient descent: each step is w - lr * (the exact mean gradient
over the whole training set), checked against that step computed by hand."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from scaletrain.config.load import load_config
from scaletrain.train.build import build_trainer

STEPS, LR = 2, 0.5


def test_gd_is_the_full_batch_step(tmp_path, fast):
    cfg = load_config("mlp-digits", [
        *fast, "log.tensorboard=false", f"train.run_dir={tmp_path / 'run'}", "optim.name=gd", f"optim.lr={LR}",
        "optim.weight_decay=0", "data.train_fraction=0.1", "model.dropout=0", "model.input_dropout=0",
        "schedule.name=constant",
        f"train.max_steps={STEPS}", "train.eval_every=0", "train.final_eval_batches=1", "train.batch_size=16"])
    trainer = build_trainer(cfg)
    task, model = trainer.task, copy.deepcopy(trainer.model)  # the initial weights, before fit
    n = task.num_train_samples
    assert 16 < n < 400  # a real subset, larger than one micro-batch
    x, y = task.train_batch(0, n)  # positions 0..n-1: every training sample once
    assert sorted(task.sample_ids(0, n).tolist()) == sorted(set(task.sample_ids(0, n).tolist()))
    for _ in range(STEPS):  # the hand-computed steps: w <- w - lr * mean gradient over all n samples
        model.zero_grad()
        task.loss(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= LR * p.grad
    trainer.fit()
    trained = load_file(tmp_path / "run" / "model.safetensors")
    for name, p in model.state_dict().items():
        # Summing the gradient in micro-batches reorders float additions: ~1e-7 relative.
        torch.testing.assert_close(trained[name], p, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
