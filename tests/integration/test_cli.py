"""The `scaletrain` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import FAST, run_cli, run_main


def assert_one_error_line(rc: int, stderr: str) -> str:
    assert rc == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# ---- (b) help --------------------------------------------------------------------------------


@pytest.mark.parametrize("argv,expected", [
    (["--help"], "COMMAND"),
    (["train", "--help"], "section.key=value"),
    (["eval", "--help"], "run folder"),
    (["generate", "--help"], "--temperature"),
    (["prepare", "--help"], "--out"),
    (["data", "verify", "--help"], "dir"),
    (["export", "--help"], "--lora"),
])
def test_help(tmp_path, argv, expected):
    rc, out, err = run_cli(*argv, cwd=tmp_path)
    assert rc == 0, err
    assert out.startswith("usage: scaletrain") and expected in out
    assert err == ""


def test_version(tmp_path):
    rc, out, _ = run_cli("--version", cwd=tmp_path)
    assert rc == 0 and out.strip().startswith("scaletrain 0.")


# ---- (c) misuse ------------------------------------------------------------------------------


@pytest.mark.parametrize("argv,expected", [
    (["frobnicate"], "frobnicate"),
    ([], "COMMAND"),
    (["train", "--bogus"], "--bogus"),
    (["eval"], "run"),
    (["generate", "x", "--tokens", "many"], "--tokens"),
    (["data"], "ACTION"),
    (["data", "verify"], "dir"),
])
def test_misuse_is_one_error_line(tmp_path, argv, expected):
    rc, out, err = run_cli(*argv, cwd=tmp_path)
    line = assert_one_error_line(rc, err)
    assert expected in line
    assert out == ""
    assert list(tmp_path.iterdir()) == []


# ---- (a, d) bad input loses nothing ----------------------------------------------------------


@pytest.mark.parametrize("overrides,expected", [
    (["model.n_layers=3"], "error: model.n_layers: unknown key"),
    (["train.precision=fp16", "train.device=cpu"], "error: train.precision=fp16 is not supported on CPU"),
])
def test_bad_config_exits_2_and_creates_no_run_folder(tmp_path, cache_dir, overrides, expected):
    run_dir = tmp_path / "run"
    rc, out, err = run_cli("train", "gpt-tiny", *FAST, f"data.cache_dir={cache_dir}",
                           f"train.run_dir={run_dir}", *overrides, cwd=tmp_path)
    assert assert_one_error_line(rc, err).startswith(expected)
    assert not run_dir.exists()
    assert not (tmp_path / "runs").exists()


# The same contract, in this process (no torch import per case): errors found after the config
# (data, run folder) also come before the run folder is created or touched.


def test_bad_data_found_after_the_config_creates_no_run_folder(tmp_path, cache_dir):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "only.txt").write_text("one file cannot be split into train and val\n")
    run_dir = tmp_path / "run"
    for pattern, expected in (("*.md", "no files match pattern '*.md'"), ("*.txt", "need at least 2 files")):
        rc, _, err = run_main("train", "gpt-tiny", *FAST, f"data.cache_dir={cache_dir}", f"data.path={corpus}",
                              f"data.pattern='{pattern}'", f"train.run_dir={run_dir}")
        assert expected in assert_one_error_line(rc, err)
        assert not run_dir.exists()


def test_missing_config_file(tmp_path):
    rc, _, err = run_main("train", str(tmp_path / "nope.yaml"))
    assert "nope.yaml'" in assert_one_error_line(rc, err)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def test_existing_run_folder_is_left_untouched(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step_00000010").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"step": 10, "split": "train", "loss": 1.0}\n')
    (run_dir / "config.yaml").write_text("name: old\n")
    (run_dir / "tensorboard").mkdir()
    (run_dir / "tensorboard" / "events.out.tfevents.1").write_bytes(b"old")
    before = _snapshot(run_dir)
    os.utime(run_dir, ns=(1, 1))
    rc, _, err = run_main("train", "gpt-tiny", *FAST, f"data.cache_dir={cache_dir}", f"train.run_dir={run_dir}")
    line = assert_one_error_line(rc, err)
    assert "train.run_dir" in line and "train.resume=auto" in line
    assert _snapshot(run_dir) == before
    assert run_dir.stat().st_mtime_ns == 1


# ---- (e) a whole run and what can be done with its folder -------------------------------------

STEPS = 30


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cache_dir):
    work = tmp_path_factory.mktemp("cli-run")
    run_dir = work / "run"
    rc, out, err = run_cli("train", "gpt-tiny", *FAST, f"data.cache_dir={cache_dir}", f"train.run_dir={run_dir}",
                           f"train.max_steps={STEPS}", "train.eval_every=10", cwd=work, timeout=300)
    assert rc == 0, err
    return run_dir, out, err


def test_train_prints_the_result(tiny_run):
    run_dir, out, err = tiny_run
    assert "Traceback" not in err
    assert "done: train_loss=" in out and "val_bpb=" in out
    assert f"run folder: {run_dir}" in out.replace("\n", "")


def test_run_folder_contract(tiny_run):
    run_dir, _, _ = tiny_run
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "model.safetensors",
            "model_config.json", "loss.png", "report.md", "tensorboard", "tokenizer.json"} <= names

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(5, STEPS + 1, 5))  # log.every=5 in gpt-tiny
    for r in train:
        assert {"step", "loss", "lr", "grad_norm", "tokens_per_second", "elapsed"} <= r.keys()
        assert all(math.isfinite(r[k]) for k in ("loss", "lr", "grad_norm", "tokens_per_second", "elapsed"))
        assert r["tokens_per_second"] > 0
    assert [r["elapsed"] for r in train] == sorted(r["elapsed"] for r in train)
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == [10, 20, STEPS]

    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("train_loss", "val_loss", "val_bpb", "unigram_loss", "steps", "tokens_per_second", "mfu",
                "peak_memory_bytes", "wall_seconds"):
        assert isinstance(summary[key], (int, float)) and math.isfinite(summary[key]), key
    assert summary["steps"] == STEPS
    assert summary["train_loss"] == train[-1]["loss"]
    assert summary["val_loss"] == val[-1]["val_loss"]
    assert summary["val_loss"] < math.log(512)
    assert summary["tokens_per_second"] > 0 and summary["wall_seconds"] > 0
    assert 0 < summary["mfu"] and summary["peak_memory_bytes"] > 0
    assert summary["sample"].startswith("def ")

    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == [f"step_{STEPS:08d}"]
    assert (run_dir / "checkpoints" / checkpoints[0] / "checksums.json").is_file()
    spec = json.loads((run_dir / "model_config.json").read_text())
    assert spec["name"] == "gpt" and spec["args"]["vocab_size"] == 512 and spec["args"]["n_layer"] == 2
    weights = load_file(run_dir / "model.safetensors")
    assert sum(t.numel() for t in weights.values()) == summary["parameters"]
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (run_dir / "report.md").read_text()
    assert report.startswith("# Run report: gpt-tiny") and "val_loss" in report and "loss.png" in report
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 100
    config = (run_dir / "config.yaml").read_text()
    assert f"max_steps: {STEPS}" in config and "run_dir: null" in config and "resume: false" in config


def test_eval_reproduces_the_final_validation(tiny_run):
    run_dir, _, _ = tiny_run
    summary = json.loads((run_dir / "summary.json").read_text())
    rc, out, err = run_cli("eval", run_dir, "--batches", "8", cwd=run_dir.parent)  # final_eval_batches
    assert rc == 0, err
    metrics = json.loads(out)
    assert metrics["val_tokens"] == summary["val_tokens"]
    assert metrics["val_loss"] == pytest.approx(summary["val_loss"], abs=1e-5)
    assert metrics["val_bpb"] == pytest.approx(summary["val_bpb"], abs=1e-5)


def test_generate_is_seeded(tiny_run):
    run_dir, _, _ = tiny_run
    rc, first, err = run_cli("generate", run_dir, "--tokens", "20", "--seed", "1", cwd=run_dir.parent)
    assert rc == 0, err
    rc, second, _ = run_main("generate", run_dir, "--tokens", "20", "--seed", "1")
    texts = [first, second]
    assert texts[0] == texts[1]
    assert texts[0].startswith("def ") and len(texts[0].strip()) > len("def ")
    rc, other, _ = run_main("generate", run_dir, "--tokens", "20", "--seed", "2")
    assert rc == 0 and other != texts[0]
    rc, _, err = run_main("generate", run_dir, "--tokens", "0")
    assert rc == 2 and err.startswith("error: --tokens")


@pytest.mark.slow
def test_resolved_config_reproduces_the_run(tiny_run, tmp_path):
    run_dir, _, _ = tiny_run
    again = tmp_path / "again"
    rc, _, err = run_cli("train", run_dir / "config.yaml", f"train.max_steps={STEPS}", f"train.run_dir={again}",
                         cwd=tmp_path, timeout=300)
    assert rc == 0, err
    first = json.loads((run_dir / "summary.json").read_text())
    second = json.loads((again / "summary.json").read_text())
    assert second["val_loss"] == first["val_loss"] and second["train_loss"] == first["train_loss"]
    assert second["sample"] == first["sample"]
    a, b = load_file(run_dir / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (again / "config.yaml").read_text() == (run_dir / "config.yaml").read_text()


def test_data_verify(tiny_run, tmp_path):
    run_dir, _, _ = tiny_run
    data_dir = Path(json.loads((run_dir / "summary.json").read_text())["data_dir"])
    rc, out, err = run_cli("data", "verify", data_dir, cwd=tmp_path)
    assert rc == 0, err
    assert out.startswith("ok:")

    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    victim = copy / manifest["splits"]["train"]["files"][0]["bin"]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    rc, out, err = run_cli("data", "verify", copy, cwd=tmp_path)
    line = assert_one_error_line(rc, err)
    assert "1 problem" in line
    assert f"{victim}: checksum mismatch" in out
