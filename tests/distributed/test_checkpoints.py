"""Checkpoints on 2 gloo ranks: an async save resumes bit for bit, and a ZeRO-1 checkpoint reshards
to one process and back like the other layouts' (tests/distributed/test_parallel.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from distributed_helpers import QUIET
from scaletrain.train import checkpoint as ckpt

pytestmark = [pytest.mark.dist, pytest.mark.slow]


@pytest.fixture
def quiet(cache_dir) -> list[str]:
    return [*QUIET, "log.every=1", f"data.cache_dir={cache_dir}"]  # every step's loss is compared

def _train(tmp_path, quiet, run: str, *args: str) -> dict:
    code, out, err = run_cli("train", "gpt-tiny", *quiet, f"train.run_dir={tmp_path / run}", *args,
                             cwd=tmp_path, timeout=300)
    assert code == 0, (out + err)[-3000:]
    return json.loads((tmp_path / run / "summary.json").read_text())


def _same_weights(a, b) -> None:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys()
    for name in x:
        assert torch.equal(x[name], y[name]), name


def _train_losses(run) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r.get("split") == "train"}


def test_async_save_on_two_ranks_resumes_bit_exact(tmp_path, quiet):
    """ddp on 2 ranks: a run that saves asynchronously, stopped at the midpoint and resumed, ends
    where the uninterrupted run with synchronous saves ends, bit for bit."""
    ddp = ["parallel.strategy=ddp", "parallel.nproc=2", "optim.name=adamw", "train.checkpoint_every=2",
           "checkpoint.keep_last=2"]
    reference = _train(tmp_path, quiet, "sync", *ddp, "train.max_steps=6")
    _train(tmp_path, quiet, "async", *ddp, "checkpoint.async_save=true", "train.max_steps=3")
    resumed = _train(tmp_path, quiet, "async", *ddp, "checkpoint.async_save=true", "train.max_steps=6",
                     "train.resume=auto")
    _same_weights(tmp_path / "sync", tmp_path / "async")
    assert resumed["train_loss"] == reference["train_loss"] and resumed["val_loss"] == reference["val_loss"]
    assert _train_losses(tmp_path / "async") == _train_losses(tmp_path / "sync")
    kept = ckpt.list_checkpoints(tmp_path / "async" / "checkpoints")
    assert [p.name for p in kept] == ["step_00000004", "step_00000006"]
    assert all(ckpt.verify_checkpoint(p) == [] for p in kept)
    assert not [p for p in (tmp_path / "async" / "checkpoints").iterdir() if p.name.startswith(".")]


def test_zero1_checkpoint_reshards_to_one_process_and_back(tmp_path, quiet):
    """zero1 on 2 ranks -> 1 process -> zero1 on 2 ranks equals the uninterrupted zero1 run bit for
    bit: each rank saved the optimizer state of the parameters it owns, one process loads their
    union, and its checkpoint splits again by owner."""
    zero1 = ["parallel.strategy=zero1", "parallel.nproc=2"]
    common = ["optim.name=adamw", "train.checkpoint_every=3", "checkpoint.keep_last=3"]
    full = _train(tmp_path, quiet, "zero1", *zero1, "train.max_steps=6", *common)
    step3 = tmp_path / "zero1" / "checkpoints" / "step_00000003"
    # 2 -> 1: one process resumes the sharded-state checkpoint and only re-saves it (0 more steps).
    _train(tmp_path, quiet, "single", f"train.resume={step3}", "train.max_steps=3", *common)
    # 1 -> 2: zero1 resumes the single process's checkpoint and finishes the run.
    back = _train(tmp_path, quiet, "back", *zero1, f"train.resume={tmp_path / 'single'}", "train.max_steps=6",
                  *common)
    _same_weights(tmp_path / "zero1", tmp_path / "back")
    assert back["train_loss"] == full["train_loss"]
    losses, resumed = _train_losses(tmp_path / "zero1"), _train_losses(tmp_path / "back")
    assert [resumed[s] for s in (4, 5, 6)] == [losses[s] for s in (4, 5, 6)]
    # The single process holds the whole AdamW state the two ranks had split between them.
    single = ckpt.list_checkpoints(tmp_path / "single" / "checkpoints")[-1]
    assert _adam_state_count(single) == _adam_state_count(step3) == 2 * full["parameters"]


def _adam_state_count(path) -> int:
    """Elements of AdamW's moments (exp_avg, exp_avg_sq) in a checkpoint's metadata."""
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(path)).read_metadata()
    total = 0
    for key, item in meta.state_dict_metadata.items():
        if key.startswith("optim.state.") and key.endswith(("exp_avg", "exp_avg_sq")):
            total += item.size.numel()
    return total
