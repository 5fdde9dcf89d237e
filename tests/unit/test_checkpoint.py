"""Checkpoints: atomic folders, pruning, checksums, fallback to the last good one, exact restore."""

import random

import numpy as np
import pytest
import torch

from scaletrain.errors import UserError
from scaletrain.train import checkpoint as ckpt


def _model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, opt


def _train(model, opt, steps):
    for _ in range(steps):
        model(torch.randn(3, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


def test_save_prunes_and_leaves_no_temporary_folders(tmp_path):
    model, opt = _model_and_optimizer()
    for step in (1, 2, 3):
        _train(model, opt, 1)
        ckpt.save_checkpoint(tmp_path, step, model, opt, {"position": step}, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_restore_is_exact_including_rng(tmp_path):
    model, opt = _model_and_optimizer()
    _train(model, opt, 3)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    path = ckpt.save_checkpoint(tmp_path, 3, model, opt, {"position": 48}, keep_last=1)
    expected_rng = (torch.rand(3), np.random.rand(), random.random())

    other, other_opt = _model_and_optimizer(seed=1)
    state = ckpt.load_checkpoint(path, other, other_opt)
    assert state["position"] == 48 and state["step"] == 3
    assert torch.equal(torch.rand(3), expected_rng[0])
    assert np.random.rand() == expected_rng[1] and random.random() == expected_rng[2]
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[a][key], other_opt.state[b][key])
    # Both continue identically from here (same RNG stream, same state).
    torch.manual_seed(9)
    _train(model, opt, 2)
    torch.manual_seed(9)
    _train(other, other_opt, 2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))


def test_auto_resume_skips_a_damaged_newest_checkpoint(tmp_path):
    model, opt = _model_and_optimizer()
    ckpt.save_checkpoint(tmp_path / "checkpoints", 1, model, opt, {}, keep_last=3)
    newest = ckpt.save_checkpoint(tmp_path / "checkpoints", 2, model, opt, {}, keep_last=3)
    shard = next(newest.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))

    chosen, skipped = ckpt.resolve_resume("auto", tmp_path)
    assert chosen.name == "step_00000001"
    assert len(skipped) == 1 and "checksum mismatch" in skipped[0]
    with pytest.raises(UserError, match="damaged"):
        ckpt.resolve_resume(str(newest), tmp_path)
    with pytest.raises(UserError, match="damaged"):
        ckpt.load_checkpoint(newest, model, opt)


def test_a_missing_file_is_detected(tmp_path):
    model, opt = _model_and_optimizer()
    path = ckpt.save_checkpoint(tmp_path, 1, model, opt, {}, keep_last=1)
    (path / "rng.safetensors").unlink()
    assert any("rng.safetensors: missing" in p for p in ckpt.verify_checkpoint(path))


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    model, opt = _model_and_optimizer()
    path = ckpt.save_checkpoint(tmp_path, 1, model, opt, {}, keep_last=1)
    other = torch.nn.Linear(3, 3)
    with pytest.raises(UserError, match="does not match"):
        ckpt.load_checkpoint(path, other, torch.optim.AdamW(other.parameters()))


def test_resaving_a_step_replaces_it_without_leftovers(tmp_path):
    model, opt = _model_and_optimizer()
    ckpt.save_checkpoint(tmp_path, 1, model, opt, {"position": 1}, keep_last=1)
    path = ckpt.save_checkpoint(tmp_path, 1, model, opt, {"position": 2}, keep_last=1)
    assert ckpt.list_checkpoints(tmp_path) == [path] and not ckpt.verify_checkpoint(path)
    assert '"position": 2' in (path / "trainer.json").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
