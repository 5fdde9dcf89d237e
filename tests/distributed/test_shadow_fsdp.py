"""The EMA and best weights under fsdp on 2 gloo ranks: they are DTensor shards like the parameters,
saved in the checkpoints beside them, and a run stopped halfway and resumed ends bit for bit where
the uninterrupted one ends; a single process resumes them from the sharded checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli

pytestmark = [pytest.mark.dist, pytest.mark.slow]

RUN = ["train.threads=1", "log.progress=false", "log.sample_tokens=0", "log.trackers=[]", "train.precision=fp32",
       "schedule.name=constant", "schedule.warmup_steps=0", "train.eval_every=2", "train.eval_batches=2",
       "train.final_eval_batches=2", "train.early_stopping=3", "train.ema_decay=0.9", "train.checkpoint_every=4"]
FSDP = ["parallel.strategy=fsdp", "parallel.nproc=2"]


def _train(tmp_path, cache_dir, run: str, *args: str) -> dict:
    code, out, err = run_cli("train", "gpt-tiny", *RUN, f"data.cache_dir={cache_dir}", f"train.run_dir={tmp_path / run}",
                             *args, cwd=tmp_path, timeout=600)
    assert code == 0, (out + err)[-3000:]
    return json.loads((tmp_path / run / "summary.json").read_text())


def _same(a, b, name) -> None:
    x, y = load_file(a / name), load_file(b / name)
    assert x.keys() == y.keys()
    for key in x:
        assert torch.equal(x[key], y[key]), (name, key)


def test_ema_and_best_weights_resume_bit_exact_under_fsdp(tmp_path, cache_dir):
    whole = _train(tmp_path, cache_dir, "whole", *FSDP, "train.max_steps=8")
    _train(tmp_path, cache_dir, "halves", *FSDP, "train.max_steps=4")
    resumed = _train(tmp_path, cache_dir, "halves", *FSDP, "train.max_steps=8", "train.resume=auto")
    for name in ("model.safetensors", "model_ema.safetensors"):
        _same(tmp_path / "whole", tmp_path / "halves", name)
    assert (resumed["ema_val_loss"], resumed["best_step"]) == (whole["ema_val_loss"], whole["best_step"])
    ema, last = load_file(tmp_path / "whole" / "model_ema.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
    assert any(not torch.equal(ema[k], last[k]) for k in ema)
    # One process continues the 2-rank run's EMA from its sharded checkpoint.
    one = _train(tmp_path, cache_dir, "halves", "train.max_steps=12", "train.resume=auto")
    assert one["steps"] == 12 and one["ema_val_loss"] == one["ema_val_loss"]
