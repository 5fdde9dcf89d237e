"""Item 8: a full disk or a read-only run folder. A checkpoint that cannot be written is reported
in one line naming the step and the intact previous checkpoint, its partial folder is removed, and
the run continues from that checkpoint once there is space. A read-only folder is refused before
any work.

Real conditions, not mocks: a small tmpfs (a disk that fills up) and a read-only remount of it.
Mounting needs root; elsewhere these tests are skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_main
from harness import QUIET, finish, start, train_args
from scaletrain.errors import RunFailure
from scaletrain.train import checkpoint as ckpt


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(size: str, name: str = "disk"):
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def _readonly(point):
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Linear(256, 256)  # ~260 KB of weights, ~770 KB per checkpoint with AdamW
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 256)).sum().backward()
    opt.step()
    return model, opt


def test_full_disk_keeps_the_previous_checkpoint(tmpfs):
    root = tmpfs("1200k") / "checkpoints"
    model, opt = _model_and_optimizer()
    ckpt.save_checkpoint(root, 1, model, opt, {"position": 1}, keep_last=2)
    with pytest.raises(RunFailure) as info:
        ckpt.save_checkpoint(root, 2, model, opt, {"position": 2}, keep_last=2)
    message = str(info.value)
    assert "checkpoint step 2 could not be written" in message
    assert f"the last complete checkpoint {root / 'step_00000001'} is intact" in message
    assert [p.name for p in root.iterdir()] == ["step_00000001"]  # no partial folder holds the space
    assert ckpt.verify_checkpoint(root / "step_00000001") == []
    other, other_opt = _model_and_optimizer()
    assert ckpt.load_checkpoint(root / "step_00000001", other, other_opt)["position"] == 1


def test_read_only_folder_keeps_the_previous_checkpoint(tmpfs):
    disk = tmpfs("4m")
    root = disk / "checkpoints"
    model, opt = _model_and_optimizer()
    ckpt.save_checkpoint(root, 1, model, opt, {"position": 1}, keep_last=1)
    _readonly(disk)
    with pytest.raises(RunFailure, match="Read-only file system.*step_00000001 is intact"):
        ckpt.save_checkpoint(root, 2, model, opt, {"position": 2}, keep_last=1)
    assert ckpt.verify_checkpoint(root / "step_00000001") == []


def test_a_read_only_run_folder_is_refused_before_any_work(tmpfs, cache_dir):
    disk = tmpfs("4m")
    (disk / "run").mkdir()
    (disk / "run" / "note.txt").write_text("an earlier run\n")
    _readonly(disk)
    code, _, err = run_main("train", "gpt-tiny", *QUIET, f"data.cache_dir={cache_dir}",
                            f"train.run_dir={disk / 'run'}", "train.resume=auto")
    assert code == 2
    assert err.strip() == f"error: train.run_dir: {disk / 'run'} is not writable (read-only file system or no permission)"


@pytest.mark.slow
def test_training_on_a_filling_disk_stops_cleanly_and_resumes(tmpfs, tmp_path, cache_dir):
    """gpt-tiny checkpoints are ~1.9 MB: a 3 MB disk holds one, not two. The run stops at the
    second with exit 1 and one error line; copied to a roomier disk it resumes and ends exactly
    where an uninterrupted run ends."""
    disk = tmpfs("3m")
    args = ["train.max_steps=6", "train.checkpoint_every=2", "checkpoint.keep_last=2"]
    code, out = finish(start(train_args(disk / "run", cache_dir, *args), tmp_path), timeout=300)
    assert code == 1, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out, out
    assert errors[0].startswith("error: checkpoint step 4 could not be written")
    assert "step_00000002 is intact" in errors[0]
    assert [p.name for p in (disk / "run" / "checkpoints").iterdir()] == ["step_00000002"]
    assert ckpt.verify_checkpoint(disk / "run" / "checkpoints" / "step_00000002") == []

    moved = tmp_path / "moved"
    shutil.copytree(disk / "run", moved)
    code, out = finish(start(train_args(moved, cache_dir, *args, "train.resume=auto"), tmp_path), timeout=300)
    assert code == 0, out
    code, out = finish(start(train_args(tmp_path / "clean", cache_dir, *args), tmp_path), timeout=300)
    assert code == 0, out
    a, b = load_file(moved / "model.safetensors"), load_file(tmp_path / "clean" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((moved / "summary.json").read_text())["steps"] == 6
