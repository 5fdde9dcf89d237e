"""Nothing is written until the inputs are checked, and no mistake loses data.

Each case snapshots the folders it could touch (every path, its bytes and mtime) before a refused
command and compares after: the command must exit 2 with one `error:` line, leave every file
byte-identical and create no path. In this process (`run_main`), on a real finished gpt-tiny run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import FAST, run_main

QUIET = [*FAST, "log.sample_tokens=0", "log.tensorboard=false", "schedule.warmup_steps=0",
         "train.eval_every=0", "train.final_eval_batches=1"]


def one_error_line(rc: int, err: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def snapshot(*folders: Path) -> dict:
    """Every path under the folders (and the folders themselves): bytes and mtime."""
    out = {}
    for folder in folders:
        for p in [folder, *sorted(folder.rglob("*"))]:
            st = p.stat()
            out[str(p)] = (st.st_mtime_ns, p.read_bytes() if p.is_file() else None)
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir) -> tuple[Path, list[str]]:
    """A finished gpt-tiny run with checkpoints at steps 2 and 4 (and a TensorBoard folder)."""
    work = tmp_path_factory.mktemp("write-order")
    common = [*QUIET, f"data.cache_dir={cache_dir}", "train.checkpoint_every=2", "checkpoint.keep_last=3"]
    rc, _, err = run_main("train", "gpt-tiny", *common, f"train.run_dir={work / 'run'}", "train.max_steps=4")
    assert rc == 0, err
    (work / "run" / "tensorboard").mkdir()
    (work / "run" / "tensorboard" / "events.out.tfevents.1").write_bytes(b"curves")
    return work / "run", common


@pytest.fixture
def run(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished[0], copy)
    return copy


def refused(tmp_path: Path, *argv: str) -> str:
    """Run `argv`; assert it is refused and that nothing under tmp_path changed or appeared."""
    before = snapshot(tmp_path)
    rc, out, err = run_main(*argv)
    line = one_error_line(rc, err)
    assert snapshot(tmp_path) == before
    return line


# ---- train and resume --------------------------------------------------------------------------


def test_resume_of_another_architecture_is_refused_naming_the_keys(finished, run, tmp_path):
    line = refused(tmp_path, "train", "gpt-tiny", *finished[1], f"train.run_dir={run}", "train.resume=auto",
                   "train.max_steps=6", "model.rope=true", "model.norm=rmsnorm")
    assert "model.rope (true here, false in the run)" in line and "model.norm" in line
    assert "train.resume=false" in line


def test_resume_with_other_data_leaves_the_run_and_its_tokenizer_alone(tmp_path):
    """The finding: a resume refused for its data had already replaced the finished run's
    tokenizer.json, and `generate` then decoded with the wrong vocabulary."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    for i in range(4):
        (corpus / f"f{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(3000)))
    common = [*QUIET, f"data.cache_dir={tmp_path / 'cache'}", f"data.path={corpus}",
              f"train.run_dir={tmp_path / 'run'}"]
    rc, _, err = run_main("train", "gpt-tiny", *common, "train.max_steps=2")
    assert rc == 0, err
    with (corpus / "f1.txt").open("a") as f:  # new words: another tokenizer, other data
        f.write(" omega psi chi phi upsilon")
    before = snapshot(tmp_path / "run")
    rc, _, err = run_main("train", "gpt-tiny", *common, "train.max_steps=4", "train.resume=auto")
    one_error_line(rc, err)
    assert snapshot(tmp_path / "run") == before


def test_resume_auto_on_a_folder_that_is_not_a_run_deletes_nothing(finished, tmp_path):
    home = tmp_path / "home"
    (home / "tensorboard").mkdir(parents=True)
    (home / "tensorboard" / "mine").write_text("not a run's")
    (home / "metrics.jsonl").write_text('{"mine": true}\n')
    (home / "notes.txt").write_text("keep me\n")
    line = refused(tmp_path, "train", "gpt-tiny", *finished[1], f"train.run_dir={home}", "train.resume=auto")
    assert f"train.run_dir: {home} is not empty and holds no run" in line


def test_a_run_whose_checkpoints_are_all_damaged_is_not_restarted(finished, run, tmp_path):
    for step in (run / "checkpoints").iterdir():
        with (step / "trainer.json").open("a") as f:
            f.write(" ")
    line = refused(tmp_path, "train", "gpt-tiny", *finished[1], f"train.run_dir={run}", "train.resume=auto",
                   "train.max_steps=6")
    assert "no intact checkpoint" in line and "step_00000004" in line and "trainer.json" in line
    assert "train.resume=false and a new train.run_dir" in line


def test_a_finished_run_without_checkpoints_is_not_overwritten(finished, run, tmp_path):
    shutil.rmtree(run / "checkpoints")
    line = refused(tmp_path, "train", "gpt-tiny", *finished[1], f"train.run_dir={run}", "train.resume=auto",
                   "train.max_steps=6")
    assert "finished run" in line and "no checkpoint" in line


def test_a_refused_resume_creates_no_run_folder(finished, run, tmp_path):
    """A checkpoint found damaged (or missing) only when the trainer starts: no new folder is left."""
    step = run / "checkpoints" / "step_00000004"
    (step / "rng.safetensors").write_bytes(b"damaged")
    new = tmp_path / "new" / "run"
    line = refused(tmp_path, "train", "gpt-tiny", *finished[1], f"train.run_dir={new}", f"train.resume={step}",
                   "train.max_steps=6")
    assert "damaged" in line and "rng.safetensors" in line
    line = refused(tmp_path, "train", "gpt-tiny", *finished[1], f"train.run_dir={new}",
                   f"train.resume={tmp_path / 'nope'}")
    assert "train.resume" in line and "does not exist" in line
    assert not (tmp_path / "new").exists()


def test_train_run_dir_that_is_a_file(finished, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    line = refused(tmp_path, "train", "gpt-tiny", *finished[1], f"train.run_dir={target}", "train.resume=auto")
    assert f"train.run_dir: {target} is a file" in line


def test_resume_auto_on_an_empty_or_missing_folder_is_a_fresh_start(fast, tmp_path):
    """What torchrun's restarts rely on: the launcher adds train.resume=auto to every attempt."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for run_dir in (empty, tmp_path / "missing"):
        rc, _, err = run_main("train", "mlp-digits", *fast, *QUIET, "train.max_steps=3", f"train.run_dir={run_dir}",
                              "train.resume=auto")
        assert rc == 0, err
        assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3


def test_a_run_that_never_checkpointed_starts_over_in_its_folder(finished, run, tmp_path):
    """A crash before the first checkpoint (a torchrun restart): same config, no checkpoint, not
    finished: the restart begins at step 0 in the same folder, old curves dropped."""
    shutil.rmtree(run / "checkpoints")
    (run / "model.safetensors").unlink()
    (run / "summary.json").unlink()
    rc, _, err = run_main("train", "gpt-tiny", *finished[1], f"train.run_dir={run}", "train.resume=auto",
                          "train.max_steps=2")
    assert rc == 0, err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2 and not (run / "tensorboard" / "events.out.tfevents.1").exists()


# ---- prepare -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,files,expected", [
    ("zero.jsonl", {"zero.jsonl": b""}, "no document in it (jsonl, field 'text'; skipped: 1 empty)"),
    ("nostr.jsonl", {"nostr.jsonl": b'{"text": 5}\n{"other": "x"}\n'}, "no document in it (jsonl, field 'text'; skipped: 2 missing_field)"),
    ("empty", {"empty/a.txt": b"", "empty/b.txt": b"  \n"}, "no document in it (text; skipped: 2 empty)"),
])
def test_prepare_of_inputs_with_no_document_writes_nothing(tmp_path, name, files, expected):
    inputs = tmp_path / "in"
    for rel, data in files.items():
        (inputs / rel).parent.mkdir(parents=True, exist_ok=True)
        (inputs / rel).write_bytes(data)
    (tmp_path / "given").mkdir()  # an empty --out stays empty; a new one is not made
    for out in (tmp_path / "given", tmp_path / "new" / "out"):
        line = refused(tmp_path, "prepare", inputs / name, "--out", out, "--workers", "1", "--no-progress")
        assert f"source {inputs / name}: {expected}" in line


def test_training_on_a_text_folder_of_empty_files_is_refused(fast, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (corpus / name).write_bytes(b"")
    line = refused(tmp_path, "train", "gpt-tiny", *fast, f"data.path={corpus}", f"train.run_dir={tmp_path / 'run'}",
                   f"data.cache_dir={tmp_path / 'cache'}")
    assert f"{corpus}: the" in line and "empty (0 bytes)" in line


def test_prepare_checks_out_and_tokenizer_before_writing(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        (inputs / f"{i}.txt").write_text(f"document number {i} with some words\n" * 20)
    (tmp_path / "file").write_text("x")
    line = refused(tmp_path, "prepare", inputs, "--out", tmp_path / "file", "--no-progress")
    assert f"--out: {tmp_path / 'file'} is a file" in line
    (tmp_path / "bad.json").write_text('{"not": "a tokenizer"}')
    line = refused(tmp_path, "prepare", inputs, "--out", tmp_path / "out", "--tokenizer", tmp_path / "bad.json",
                   "--no-progress")
    assert "--tokenizer:" in line and "bad.json" in line


# ---- compress and verify -----------------------------------------------------------------------


@pytest.mark.parametrize("student,expected", [
    ("foo=1", "unknown model key(s) ['foo']"),
    ("d_model=33", "model.d_model (33) must be divisible by model.n_head"),
    ("n_layer=-1", "model.n_layer must be a positive integer"),
])
def test_compress_checks_the_student_before_writing(finished, run, tmp_path, student, expected):
    line = refused(tmp_path, "compress", run, "--method", "distill", "--student", student, "--no-onnx",
                   "--out", tmp_path / "out")
    assert line.startswith("error: --student:") and expected in line


def test_compress_that_fails_midway_leaves_no_folder(finished, run, tmp_path, monkeypatch):
    from scaletrain.compress import methods
    from scaletrain.errors import UserError

    def fail(*args, **kwargs):
        (args[-1] / "model.safetensors").write_bytes(b"half")  # something was written already
        raise UserError("planted failure")

    monkeypatch.setattr(methods, "apply", fail)
    (tmp_path / "given").mkdir()
    for out in (tmp_path / "given", tmp_path / "a" / "b"):
        line = refused(tmp_path, "compress", run, "--method", "prune", "--no-onnx", "--out", out)
        assert line == "error: planted failure"
    (tmp_path / "file").write_text("x")
    line = refused(tmp_path, "compress", run, "--method", "prune", "--out", tmp_path / "file")
    assert f"--out: {tmp_path / 'file'} is a file" in line
    line = refused(tmp_path, "compress", run, "--method", "prune", "--student", "hidden=[3]", "--out",
                   tmp_path / "out")
    assert "--student: only --method distill" in line


def test_verify_removes_its_temporary_folder_also_on_failure(tmp_path, monkeypatch):
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    rc, _, err = run_main("verify", "mlp-digits", *FAST, "model.dropout=0", "data.path=/nonexistent/mnist",
                          "--steps", "1")
    assert "/nonexistent/mnist" in one_error_line(rc, err)
    assert list(temp.iterdir()) == []
    rc, out, err = run_main("verify", "mlp-digits", *FAST, "model.dropout=0", "--steps", "1")
    assert rc == 0, err
    assert list(temp.iterdir()) == []


def test_verify_keep_where_nothing_can_be_written(tmp_path):
    (tmp_path / "file").write_text("x")
    for keep, expected in ((tmp_path / "file" / "k", f"--keep: {tmp_path / 'file'} is a file, so"),
                           (Path("/proc/scaletrain-test/k"), "--keep: cannot create /proc/scaletrain-test/k")):
        line = refused(tmp_path, "verify", "mlp-digits", *FAST, "model.dropout=0", "--steps", "1", "--keep", keep)
        assert expected in line
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        line = refused(tmp_path, "verify", "mlp-digits", *FAST, "model.dropout=0", "--keep", ro / "k")
        assert "is not a writable folder" in line
