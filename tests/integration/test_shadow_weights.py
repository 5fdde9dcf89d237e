"""Early stopping exports the best evaluation's weights; train.ema_decay saves an EMA of the
weights beside them; both continue exactly through a resume (they are in the checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from scaletrain.config.load import load_config
from scaletrain.train.build import build_trainer

QUIET = ["log.sample_tokens=0", "log.trackers=[]"]


def trainer_for(preset: str, fast, run_dir: Path, *overrides: str):
    return build_trainer(load_config(preset, [*fast, *QUIET, f"train.run_dir={run_dir}", *overrides]))


def checkpoint_weights(checkpoint: Path, tmp: Path) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp / f"{checkpoint.name}.pt"
    dcp_to_torch_save(str(checkpoint), str(out))
    return torch.load(out, weights_only=False)


def test_early_stopping_exports_the_best_weights_and_checkpoints_the_last(tmp_path, fast):
    run = tmp_path / "run"
    trainer = trainer_for("gpt-tiny", fast, run, "optim.lr=10.0", "schedule.name=constant", "train.eval_every=2",
                          "train.eval_batches=2", "train.final_eval_batches=2", "train.early_stopping=2",
                          "train.max_steps=40", "train.checkpoint_every=2", "checkpoint.keep_last=40")
    summary = trainer.fit()
    assert summary["stopped_by"] == "early_stopping"
    best, last = summary["best_step"], summary["steps"]
    assert best < last and summary["exported_step"] == best
    exported = load_file(run / "model.safetensors")
    at_best = checkpoint_weights(run / "checkpoints" / f"step_{best:08d}", tmp_path)["model"]
    at_last = checkpoint_weights(run / "checkpoints" / f"step_{last:08d}", tmp_path)["model"]
    for name, tensor in exported.items():
        assert torch.equal(tensor, at_best[name]), name
    assert any(not torch.equal(exported[n], at_last[n]) for n in exported)  # the last checkpoint: the last weights
    # The summary's validation metrics are the exported weights' (the same batches as every evaluation).
    vals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    at_best_eval = next(r["val_loss"] for r in vals if r["split"] == "val" and r["step"] == best)
    assert summary["val_loss"] == at_best_eval


def test_early_stopping_keeps_the_last_weights_when_they_are_the_best(tmp_path, fast):
    summary = trainer_for("mlp-digits", fast, tmp_path / "run", "train.max_steps=30", "train.eval_every=10",
                          "train.early_stopping=3", "schedule.name=constant").fit()
    assert summary["stopped_by"] == "max_steps" and summary["best_step"] == summary["exported_step"] == 30


def test_ema_weights_follow_the_formula(tmp_path, fast):
    run = tmp_path / "run"
    trainer = trainer_for("mlp-digits", fast, run, "train.max_steps=12", "train.ema_decay=0.8", "train.eval_every=0",
                          "guard.action=off")
    ema = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    def follow(tr, step, loss):  # after every step: the EMA of the weights, computed here
        decay = min(0.8, (1 + step) / (10 + step))
        for k, v in tr.model.state_dict().items():
            ema[k] = torch.lerp(ema[k], v.detach(), 1 - decay)

    trainer.step_hook = follow
    summary = trainer.fit()
    saved = load_file(run / "model_ema.safetensors")
    assert saved.keys() == ema.keys()
    for name in saved:
        torch.testing.assert_close(saved[name], ema[name], rtol=0, atol=1e-6)
    final = load_file(run / "model.safetensors")
    assert any(not torch.equal(final[k], saved[k]) for k in saved)
    for name, tensor in trainer.model.state_dict().items():  # the trainer's model keeps its own weights
        assert torch.equal(tensor, final[name]), name
    assert summary["ema_val_loss"] > 0 and 0 <= summary["ema_val_accuracy"] <= 1


def test_ema_and_best_weights_resume_exactly(tmp_path, fast):
    common = ["schedule.name=constant", "train.ema_decay=0.9", "train.early_stopping=5", "train.eval_every=5",
              "train.checkpoint_every=10"]
    a = trainer_for("mlp-digits", fast, tmp_path / "a", *common, "train.max_steps=20").fit()
    trainer_for("mlp-digits", fast, tmp_path / "b", *common, "train.max_steps=10").fit()
    b = trainer_for("mlp-digits", fast, tmp_path / "b", *common, "train.max_steps=20", "train.resume=auto").fit()
    for name in ("model.safetensors", "model_ema.safetensors"):
        wa, wb = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        for key in wa:
            assert torch.equal(wa[key], wb[key]), (name, key)
    assert (a["best_step"], a["exported_step"], a["ema_val_loss"]) == (b["best_step"], b["exported_step"], b["ema_val_loss"])
    saved = checkpoint_weights(tmp_path / "b" / "checkpoints" / f"step_{10:08d}", tmp_path)
    assert saved["ema"].keys() == saved["model"].keys() and "best" in saved
