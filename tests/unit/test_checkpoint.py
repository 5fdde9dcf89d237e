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


# ---- checkpoint.async_save -----------------------------------------------------------------------


def _params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.fixture
def held_write(monkeypatch):
    """An event that DCP's background write waits for: the test decides when the files are written."""
    import threading

    from torch.distributed.checkpoint import state_dict_saver

    go, real_save = threading.Event(), state_dict_saver.save

    def save_when_told(*args, **kwargs):
        assert go.wait(60)
        go.writes += 1
        return real_save(*args, **kwargs)

    go.writes = 0
    monkeypatch.setattr(state_dict_saver, "save", save_when_told)  # what the write thread calls
    return go


def test_async_save_appears_sealed_once_written_and_holds_the_state_of_its_step(tmp_path, held_write):
    model, opt = _model_and_optimizer()
    _train(model, opt, 2)
    at_save = _params(model)
    moments = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]
    torch.manual_seed(5)
    rng_at_save = torch.get_rng_state()
    path = ckpt.save_checkpoint(tmp_path, 2, model, opt, {"position": 32}, keep_last=1, async_save=True)
    # Not in place before the write is finished: a resume cannot see a half-written checkpoint.
    assert ckpt.list_checkpoints(tmp_path) == [] and not path.exists()
    assert (tmp_path / ".tmp-step_00000002").is_dir()
    _train(model, opt, 2)  # training goes on before the write, changing every tensor in place
    torch.rand(10)
    held_write.set()
    assert ckpt.finish_pending_save() == path
    assert held_write.writes == 1
    assert ckpt.finish_pending_save() is None  # nothing left in flight
    assert ckpt.list_checkpoints(tmp_path) == [path] and ckpt.verify_checkpoint(path) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    other, other_opt = _model_and_optimizer(seed=1)
    state = ckpt.load_checkpoint(path, other, other_opt)
    assert state["position"] == 32 and state["step"] == 2
    assert all(torch.equal(a, b) for a, b in zip(at_save, other.parameters()))  # the step's, not later
    assert all(torch.equal(m, other_opt.state[p]["exp_avg"]) for m, p in zip(moments, other.parameters()))
    assert torch.equal(torch.get_rng_state(), rng_at_save)


def test_async_saves_prune_only_once_the_next_is_in_place(tmp_path):
    model, opt = _model_and_optimizer()
    ckpt.save_checkpoint(tmp_path, 1, model, opt, {"position": 1}, keep_last=1)
    _train(model, opt, 1)
    ckpt.save_checkpoint(tmp_path, 2, model, opt, {"position": 2}, keep_last=1, async_save=True)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000001"]  # kept while step 2 is written
    _train(model, opt, 1)
    ckpt.save_checkpoint(tmp_path, 3, model, opt, {"position": 3}, keep_last=1, async_save=True)  # finishes 2
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002"]
    ckpt.finish_pending_save()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000003"]
    assert ckpt.verify_checkpoint(tmp_path / "step_00000003") == []


def test_a_dropped_async_save_leaves_the_previous_checkpoint_newest_and_intact(tmp_path):
    """What a crash during the write leaves: the new folder hidden and unsealed, the previous one
    in place, and a resume that takes the previous one."""
    model, opt = _model_and_optimizer()
    first = ckpt.save_checkpoint(tmp_path, 1, model, opt, {"position": 1}, keep_last=1)
    _train(model, opt, 1)
    ckpt.save_checkpoint(tmp_path, 2, model, opt, {"position": 2}, keep_last=1, async_save=True)
    ckpt.drop_pending_save()
    assert ckpt.finish_pending_save() is None
    assert ckpt.list_checkpoints(tmp_path) == [first] and ckpt.verify_checkpoint(first) == []
    assert not (tmp_path / ".tmp-step_00000002" / "checksums.json").exists()
    found, skipped = ckpt.resolve_resume(str(tmp_path), tmp_path)
    assert found == first and skipped == []


def test_a_failed_async_write_is_reported_at_the_next_save_and_loses_nothing(tmp_path, monkeypatch):
    from torch.distributed.checkpoint import state_dict_saver

    from scaletrain.errors import RunFailure

    model, opt = _model_and_optimizer()
    first = ckpt.save_checkpoint(tmp_path, 1, model, opt, {"position": 1}, keep_last=1)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path))

    monkeypatch.setattr(state_dict_saver, "save", full_disk)  # what the write thread calls
    ckpt.save_checkpoint(tmp_path, 2, model, opt, {"position": 2}, keep_last=1, async_save=True)
    monkeypatch.undo()
    with pytest.raises(RunFailure, match="checkpoint step 2 could not be written.*No space left on device.*"
                                         "step_00000001 is intact"):
        ckpt.save_checkpoint(tmp_path, 3, model, opt, {"position": 3}, keep_last=1, async_save=True)
    assert ckpt.list_checkpoints(tmp_path) == [first] and ckpt.verify_checkpoint(first) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the partial folder is gone
    assert ckpt.finish_pending_save() is None
