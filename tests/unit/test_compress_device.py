"""compress trains on the run's device (or --device), and its pieces follow the device they are
given. No GPU here: the meta device stands in for one, proving that nothing falls back to the CPU."""

from __future__ import annotations

import pytest
import torch

from scaletrain.compress.distill import DistillationTask
from scaletrain.compress.finetune import train_config, training_device
from scaletrain.compress.prune import KeepPruned
from scaletrain.config.load import load_config
from scaletrain.errors import UserError


@pytest.mark.parametrize("run_device, cuda_here, flag, expected", [
    (None, True, None, "cuda"),      # the run's default: CUDA when available
    (None, False, None, "cpu"),
    ("cpu", True, None, "cpu"),      # the run asked for the CPU
    ("cuda", False, None, "cpu"),    # trained on a GPU elsewhere, compressed here
    ("cuda", True, "cpu", "cpu"),    # --device wins
    (None, True, "cuda", "cuda"),
])
def test_training_device_is_the_runs_unless_told(monkeypatch, run_device, cuda_here, flag, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_here)
    cfg = load_config("mlp-digits", [] if run_device is None else [f"train.device={run_device}"])
    device = training_device(cfg, flag)
    assert device.type == expected
    assert train_config(cfg, 5, "/tmp/x", device=device).train.device == expected


def test_device_cuda_without_one_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="--device cuda"):
        training_device(load_config("mlp-digits", []), "cuda")


class _Ids:
    """A base task whose batches are token ids (CPU tensors, as the loaders make them)."""

    unit = "tokens"

    def train_batch(self, position: int, batch_size: int):
        x = torch.arange(position, position + batch_size * 4).reshape(batch_size, 4) % 7
        return x, (x + 1) % 7


def test_the_teacher_answers_on_the_students_device():
    teacher = torch.nn.Embedding(7, 7, device="meta")  # a stand-in GPU: CPU tensors cannot meet it
    task = DistillationTask(_Ids(), teacher, device=torch.device("meta"))
    x, packed = task.train_batch(0, 2)
    assert x.device.type == "cpu"  # the trainer moves the inputs itself
    assert packed.device.type == "meta" and packed.shape == (2, 4, 8)  # 7 logits + the label


def test_pruning_masks_follow_the_weights_to_the_training_device():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3))
    keeper = KeepPruned(model, {"0": torch.ones(3, 3)})
    model.to("meta")
    model(torch.zeros(1, 3, device="meta"))  # the hook multiplies by the mask: on the weights' device
    assert keeper.masks["0"].device.type == "meta"


def test_a_fine_tune_of_a_time_budgeted_run_counts_steps(tmp_path):
    """The `gpt` preset fits its schedule to train.max_minutes (schedule.budget=time); a fine-tune
    has a step count and no minutes, so its config is a valid step-budgeted one (it crashed the
    trainer with a TypeError before)."""
    cfg = load_config("gpt")
    assert cfg.schedule.budget == "time" and cfg.train.max_minutes
    c = train_config(cfg, 20, tmp_path / "finetune")
    assert c.schedule.budget == "steps" and c.train.max_minutes is None and c.train.max_steps == 20
    type(c).model_validate(c.model_dump())  # what the trainer would have refused
