"""Item 5: a NaN/Inf loss or gradient, and a sudden loss spike, are caught within one step and
handled as guard.action says (skip, roll back with a lower lr, stop); the run finishes.

Faults come from `SCALETRAIN_FAULT` (parallel/faults.py: `nan:step=N`, `spike:step=N:factor=F`);
an Inf gradient with a finite loss comes from a gradient hook on a real model.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from conftest import run_main
from harness import QUIET
from scaletrain import Classification, Trainer, load_config
from scaletrain.parallel import faults


@pytest.fixture
def train(tmp_path, cache_dir, monkeypatch):
    """Train gpt-tiny in this process with a fault; returns (exit code, stderr+stdout, run folder)."""

    def run(name: str, fault: str | None, *extra: str):
        faults._fired.clear()  # each fault fires once per process: a fresh "process" per run
        if fault:
            monkeypatch.setenv("SCALETRAIN_FAULT", fault)
        else:
            monkeypatch.delenv("SCALETRAIN_FAULT", raising=False)
        run_dir = tmp_path / name
        code, out, err = run_main("train", "gpt-tiny", *QUIET, f"data.cache_dir={cache_dir}",
                                  f"train.run_dir={run_dir}", *extra)
        return code, out + err, run_dir

    return run


def _weights(run_dir):
    return load_file(run_dir / "model.safetensors")


def _train_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("split") == "train"]


def test_nan_loss_is_skipped_within_its_step(train):
    """The NaN step's update is dropped and nothing else: 4 steps with a NaN at step 4 end with
    exactly the weights of 3 clean steps."""
    code, log, nan_run = train("nan", "nan:step=4", "train.max_steps=4")
    assert code == 0, log
    assert "warning: step 4: loss is nan; update skipped (guard.action=skip)" in log
    code, log, clean = train("clean", None, "train.max_steps=3")
    assert code == 0, log
    a, b = _weights(nan_run), _weights(clean)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.isfinite(t).all() for t in a.values())
    records = _train_records(nan_run)
    assert records[-1]["step"] == 4 and records[-1]["skipped_steps"] == 1
    summary = json.loads((nan_run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["stopped_by"] == "max_steps"


def test_nan_with_rollback_reloads_the_checkpoint_and_lowers_the_lr(train):
    code, log, run_dir = train("rollback", "nan:step=5", "train.max_steps=8", "train.checkpoint_every=2",
                               "guard.action=rollback", "guard.lr_factor=0.25", "optim.lr=0.002")
    assert code == 0, log
    assert "warning: step 5: loss is nan; rolled back to step_00000004, learning rate x 0.25" in log
    records = _train_records(run_dir)
    lr = {r["step"]: r["lr"] for r in records}
    assert lr[4] == pytest.approx(0.002) and lr[8] == pytest.approx(0.0005)
    assert all(math.isfinite(r["loss"]) for r in records)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["stopped_by"] == "max_steps"


def test_loss_spike_is_caught_and_skipped(train):
    code, log, run_dir = train("spike", "spike:step=9:factor=30", "train.max_steps=10", "guard.spike_factor=3")
    assert code == 0, log
    assert "warning: step 9: loss spiked to" in log and "update skipped" in log
    assert _train_records(run_dir)[-1]["skipped_steps"] == 1


def test_a_spike_below_the_factor_is_trained_on(train):
    code, log, run_dir = train("small", "spike:step=9:factor=1.5", "train.max_steps=10", "guard.spike_factor=3")
    assert code == 0, log
    assert "spiked" not in log
    assert "skipped_steps" not in _train_records(run_dir)[-1]


def test_stop_ends_the_run_with_the_reason(train):
    code, log, run_dir = train("stop", "nan:step=3", "train.max_steps=6", "guard.action=stop")
    assert "error: step 3: loss is nan; stopping (guard.action=stop)" in log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_by"] == "non_finite_loss" and summary["steps"] == 2


class _InfGradientAt(nn.Module):
    """An MLP whose first weight gets an Inf gradient at one optimizer step (the loss stays finite)."""

    def __init__(self, at_call: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        self.calls, self.at_call = 0, at_call
        self.net[0].weight.register_hook(self._hook)

    def _hook(self, grad):
        return grad * math.inf if self.calls == self.at_call else grad

    def forward(self, x):
        self.calls += 1
        return self.net(x)


@pytest.mark.parametrize("clip", ["1.0", "0.0"], ids=["clipped", "unclipped"])
def test_inf_gradient_with_a_finite_loss_is_caught_within_its_step(tmp_path, clip):
    """With clipping off the gradient norm is only computed on logging steps: the guard must still
    see the Inf on a step that does not log."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 8, generator=g), torch.randint(0, 3, (256,), generator=g)
    data = TensorDataset(x, y)
    cfg = load_config("mlp-digits", [f"train.run_dir={tmp_path / 'run'}", "train.max_steps=6", "train.eval_every=0",
                                     f"train.grad_clip={clip}", "log.every=5", "log.progress=false",
                                     "log.tensorboard=false", "schedule.name=constant", "train.batch_size=16"])
    torch.manual_seed(0)
    model = _InfGradientAt(at_call=3)  # the third forward is step 3 (one micro-batch per step)
    summary = Trainer.from_config(cfg, model, Classification(data, data, seed=0)).fit()
    assert summary["stopped_by"] == "max_steps"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    records = _train_records(tmp_path / "run")
    assert records[-1]["skipped_steps"] == 1
