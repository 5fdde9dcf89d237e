"""Every registered optimizer through the real Trainer on the MLP preset: the loss falls, and a
checkpoint resumes bit for bit (N steps straight == N/2 + resume N/2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scaletrain.config.load import load_config
from scaletrain.optim import available
from scaletrain.train.build import build_trainer

QUIET = ["log.sample_tokens=0", "log.tensorboard=false", "train.eval_every=0", "train.final_eval_batches=2",
         "train.eval_batch_size=128", "log.every=5"]
# An lr per optimizer at which 40 steps of the MLP clearly learn (sign / trust-ratio / relative-step
# methods want other scales than Adam's).
LR = {"gd": 1.0, "sgd": 1.0, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.02, "rmsprop": 1e-3,
      "adam": 2e-3, "adamw": 1e-2, "lamb": 0.05, "lars": 5.0, "lion": 3e-3, "muon": 0.03,
      "adafactor": 0.1, "adamw8bit": 1e-2}


def fit(run_dir: Path, fast: list[str], name: str, *overrides: str) -> dict:
    cfg = load_config("mlp-digits", [*fast, *QUIET, f"train.run_dir={run_dir}", f"optim.name={name}",
                                     f"optim.lr={LR[name]}", *overrides])
    return build_trainer(cfg).fit()


def test_every_registry_entry_has_a_test_lr():
    assert sorted(LR) == available()


def _train_losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["split"] == "train"]


@pytest.mark.parametrize("name", sorted(LR))
def test_trains_the_mlp(tmp_path, fast, name):
    summary = fit(tmp_path / "run", fast, name, "train.max_steps=40", "data.train_fraction=0.5",
                  "optim.weight_decay=0.01")
    losses = _train_losses(tmp_path / "run")
    assert summary["steps"] == 40
    # ln(10) = 2.30 at chance; every optimizer must at least take a quarter off the first window.
    assert losses[-1] < 0.75 * losses[0], losses
    assert summary["val_loss"] < 2.0


@pytest.mark.slow  # three short runs per optimizer
@pytest.mark.parametrize("name", sorted(LR))
def test_resume_is_bit_exact(tmp_path, fast, name):
    n = 6
    common = ["schedule.name=constant", f"train.checkpoint_every={n // 2}", "data.train_fraction=0.3",
              "optim.weight_decay=0.01", "model.dropout=0.1"]
    a = fit(tmp_path / "a", fast, name, *common, f"train.max_steps={n}")
    fit(tmp_path / "b", fast, name, *common, f"train.max_steps={n // 2}")
    b = fit(tmp_path / "b", fast, name, *common, f"train.max_steps={n}", "train.resume=auto")
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert a["val_loss"] == b["val_loss"] and a["train_loss"] == b["train_loss"]
