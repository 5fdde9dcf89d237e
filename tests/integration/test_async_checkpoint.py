"""checkpoint.async_save: the same checkpoints as a synchronous save, and a resume from them is the
uninterrupted run bit for bit (one process; 2-rank ddp in tests/distributed/test_checkpoints.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scaletrain.config.load import load_config
from scaletrain.train import checkpoint as ckpt
from scaletrain.train.build import build_trainer

N = 6  # the resumed run stops at N, the others run 2N; a checkpoint every 2 steps
RUN = ["log.sample_tokens=0", "log.tensorboard=false", "model.dropout=0.1", "schedule.name=constant",
       "train.checkpoint_every=2", "checkpoint.keep_last=2", "train.eval_every=0", "train.final_eval_batches=2"]
ASYNC = "checkpoint.async_save=true"


def fit(fast: list[str], run_dir: Path, *overrides: str) -> dict:
    cfg = load_config("gpt-tiny", [*fast, *RUN, f"train.run_dir={run_dir}", *overrides])
    return build_trainer(cfg).fit()


def _same_weights(a: Path, b: Path) -> None:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys()
    for name in x:
        assert torch.equal(x[name], y[name]), name


def _dcp(path: Path, tmp: Path) -> dict:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp / f"{path.parent.parent.name}-{path.name}.pt"
    dcp_to_torch_save(str(path), str(out))
    return torch.load(out, weights_only=False)


def _flat(state: dict, prefix: str = ""):
    for key, value in state.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.slow
def test_async_save_resumes_bit_exact(tmp_path, fast):
    sync, plain, resumed = tmp_path / "sync", tmp_path / "async", tmp_path / "resumed"
    reference = fit(fast, sync, f"train.max_steps={2 * N}")
    uninterrupted = fit(fast, plain, f"train.max_steps={2 * N}", ASYNC)
    # Stopped at the midpoint, then continued from its last (async) checkpoint by a new trainer.
    fit(fast, resumed, f"train.max_steps={N}", ASYNC)
    halfway = load_file(resumed / "model.safetensors")
    again = fit(fast, resumed, f"train.max_steps={2 * N}", ASYNC, "train.resume=auto")

    assert any(not torch.equal(halfway[k], v) for k, v in load_file(resumed / "model.safetensors").items())
    for run, summary in ((plain, uninterrupted), (resumed, again)):
        _same_weights(sync, run)
        assert summary["train_loss"] == reference["train_loss"] and summary["val_loss"] == reference["val_loss"]
        # The checkpoints hold what a synchronous save writes, and only sealed ones are in place.
        kept = ckpt.list_checkpoints(run / "checkpoints")
        assert [p.name for p in kept] == [f"step_{2 * N - 2:08d}", f"step_{2 * N:08d}"]
        assert all(ckpt.verify_checkpoint(p) == [] for p in kept)
        assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
        expected = dict(_flat(_dcp(sync / "checkpoints" / kept[0].name, tmp_path)))
        got = dict(_flat(_dcp(kept[0], tmp_path)))
        assert expected.keys() == got.keys()
        for key, value in expected.items():
            assert torch.equal(value, got[key]) if isinstance(value, torch.Tensor) else value == got[key], key
    assert ckpt.finish_pending_save() is None  # every run left nothing in flight
