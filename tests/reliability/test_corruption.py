"""Item 3: truncated, bit-flipped or missing checkpoint files and data shards are detected by
checksum every time; with train.resume=auto training falls back to the previous good checkpoint,
says so, and still ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_main
from harness import QUIET
from scaletrain.data import shards
from scaletrain.errors import UserError
from scaletrain.train import checkpoint as ckpt

DAMAGE = ("truncate", "bitflip", "delete")


def damage(path: Path, how: str, seed: int = 0) -> None:
    """Truncate to half, flip one bit in the middle (offset varied by seed), or delete."""
    if how == "delete":
        path.unlink()
        return
    raw = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(raw[: len(raw) // 2]))
    else:
        at = (len(raw) // 2 + 7919 * seed) % len(raw)
        raw[at] ^= 1 << (seed % 8)
        path.write_bytes(bytes(raw))


def _train(cache_dir, run_dir, *extra):
    code, out, err = run_main("train", "gpt-tiny", *QUIET, f"data.cache_dir={cache_dir}",
                              f"train.run_dir={run_dir}", *extra)
    return code, out + err


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir):
    """A 4-step run with checkpoints at steps 2 and 4, and an uninterrupted 6-step reference."""
    work = tmp_path_factory.mktemp("corruption")
    common = ["train.checkpoint_every=2", "checkpoint.keep_last=3"]
    code, log = _train(cache_dir, work / "run", "train.max_steps=4", *common)
    assert code == 0, log
    code, log = _train(cache_dir, work / "reference", "train.max_steps=6", *common)
    assert code == 0, log
    return work, common


def test_every_checkpoint_file_damaged_any_way_is_detected(finished, tmp_path):
    work, _ = finished
    source = work / "run" / "checkpoints" / "step_00000004"
    names = sorted(p.name for p in source.iterdir())
    assert {".metadata", "checksums.json", "rng.safetensors", "trainer.json"} <= set(names)
    tried = 0
    for name in names:
        for how in DAMAGE:
            copy = tmp_path / f"{name}-{how}"
            shutil.copytree(source, copy)
            damage(copy / name, how, seed=tried)
            problems = ckpt.verify_checkpoint(copy)
            assert problems and name in problems[0], (name, how, problems)
            with pytest.raises(UserError, match="damaged"):
                ckpt.resolve_resume(str(copy), tmp_path)
            tried += 1
    assert tried == 3 * len(names)


def test_resume_auto_falls_back_to_the_previous_good_checkpoint(finished, tmp_path, cache_dir):
    work, common = finished
    run_dir = tmp_path / "run"
    shutil.copytree(work / "run", run_dir)
    damage(run_dir / "checkpoints" / "step_00000004" / "__0_0.distcp", "bitflip")
    code, log = _train(cache_dir, run_dir, "train.max_steps=6", "train.resume=auto", *common)
    assert code == 0, log
    assert "warning: skipped damaged checkpoint step_00000004:" in log and "checksum mismatch" in log
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000002'} at step 2" in log.replace("\n", "")
    a, b = load_file(work / "reference" / "model.safetensors"), load_file(run_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _prepared(cache_dir) -> Path:
    """gpt-tiny's prepared data in the session's cache (other tests prepare other data there)."""
    from scaletrain.config.load import load_config
    from scaletrain.data import cache, pipeline

    found = cache.folder(cache_dir, pipeline.plan(cache.settings(load_config("gpt-tiny").data))["fingerprint"])
    assert (found / "manifest.json").is_file(), "the session's data cache holds no prepared gpt-tiny data"
    return found


def test_every_data_file_damaged_any_way_is_detected(finished, cache_dir, tmp_path):
    source = _prepared(cache_dir)
    # stats.json is `prepare`'s report (what cleaning and dedup removed, timings), read by nobody to
    # train: it carries no checksum, and a damaged one is refused by its reader (`data inspect`).
    names = sorted(p.name for p in source.iterdir() if p.is_file() and p.name != "stats.json")
    assert {"manifest.json", "tokenizer.json", "train-00000_00000.bin", "train-00000_00000.idx"} <= set(names)
    for i, name in enumerate(names):
        for how in DAMAGE:
            copy = tmp_path / f"{name}-{how}"
            shutil.copytree(source, copy)
            damage(copy / name, how, seed=i)
            problems = shards.verify(copy)
            assert problems and any(name in p for p in problems), (name, how, problems)


def test_training_refuses_a_bit_flipped_shard_in_the_cache(finished, cache_dir, tmp_path):
    """The prepared cache is reused when its files have the right sizes: a flipped bit must still be
    caught before training on it (by checksum), naming the file."""
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir, cache)
    victim = _prepared(cache) / "train-00000_00000.bin"
    damage(victim, "bitflip")
    run_dir = tmp_path / "run"
    code, log = _train(cache, run_dir, "train.max_steps=2", "schedule.warmup_steps=0")
    assert code == 2, log
    assert f"token shard {victim} does not match its checksum" in log
    assert not run_dir.exists()


def test_an_edited_manifest_field_is_caught_by_its_own_checksum(cache_dir, tmp_path):
    """eot_id and the source byte count size no file: only the manifest's self-checksum sees them."""
    copy = tmp_path / "data"
    shutil.copytree(_prepared(cache_dir), copy)
    text = (copy / "manifest.json").read_text()
    manifest = json.loads(text)
    edited = text.replace(f'"eot_id": {manifest["eot_id"]}', f'"eot_id": {manifest["eot_id"] + 1}')
    assert edited != text
    (copy / "manifest.json").write_text(edited)
    with pytest.raises(UserError, match="manifest.json does not match its checksum"):
        shards.TokenShards(copy, "train")
    assert any("manifest.json does not match its checksum" in p for p in shards.verify(copy))


def test_shard_ids_outside_the_vocabulary_are_refused_before_training(cache_dir, tmp_path):
    """Checksums prove a shard is what its manifest says, not that its ids fit the model: a shard
    written by another tool with ids >= vocab_size used to end training in an IndexError."""
    import numpy as np

    data = tmp_path / "data"
    shutil.copytree(_prepared(cache_dir), data)
    manifest = json.loads((data / "manifest.json").read_text())
    entry = manifest["splits"]["train"]["files"][0]
    victim = data / entry["bin"]
    ids = np.fromfile(victim, dtype="<u2")
    ids[len(ids) // 3] = manifest["vocab_size"] + 7
    ids.tofile(victim)
    entry["xxh3_128"]["bin"] = shards.file_xxh3(victim)
    shards.write_manifest(data, manifest)
    expected = f"{victim}: token id {manifest['vocab_size'] + 7} is outside the vocabulary"
    assert any(expected in problem for problem in shards.verify(data))
    run_dir = tmp_path / "run"
    code, log = _train(cache_dir, run_dir, "data.path=", f"data.mixture=[{{path: '{data}'}}]", "train.max_steps=2",
                       "schedule.warmup_steps=0")
    assert code == 2 and f"error: token shard {expected}" in log, log
    assert not run_dir.exists()


def test_a_crash_between_the_renames_of_a_resaved_step_loses_nothing(tmp_path):
    """Re-saving step N moves the old folder aside, then renames the new one in: a kill between the
    two left step N only as `.old-step_N`, invisible to resume=auto (with keep_last=1: no checkpoint
    at all, a restart from step 0). resume=auto reads it where it is (a check writes nothing), and
    the trainer puts it back once the start is checked."""
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters())
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, 7, model, opt, {"position": 70}, keep_last=1)
    (root / "step_00000007").rename(root / ".old-step_00000007")  # the state the crash leaves
    (root / ".tmp-step_00000007").mkdir()  # and the new copy, unfinished
    chosen, skipped = ckpt.resolve_resume("auto", tmp_path)
    assert chosen == root / ".old-step_00000007" and skipped == [] and ckpt.checkpoint_step(chosen) == 7
    assert ckpt.verify_checkpoint(chosen) == []
    ckpt.recover_replaced(root)
    assert not (root / ".old-step_00000007").exists() and ckpt.verify_checkpoint(root / "step_00000007") == []
