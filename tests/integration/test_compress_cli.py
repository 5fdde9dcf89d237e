"""`scaletrain compress` on a real (tiny) mlp-digits run: outputs, loading back, and bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import FAST, run_main


def one_error_line(rc: int, err: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("compress") / "mlp"
    rc, _, err = run_main("train", "mlp-digits", *FAST, "train.max_steps=60", "train.eval_every=0",
                          f"train.run_dir={run_dir}")
    assert rc == 0, err
    return run_dir


QUICK = ["--no-onnx", "--latency-rounds", "1"]


@pytest.mark.slow
def test_structured_pruning_from_the_cli_loads_back_and_evaluates(mlp_run, tmp_path):
    from scaletrain.compress import load_model_dir

    out = tmp_path / "pruned"
    rc, stdout, err = run_main("compress", mlp_run, "--method", "prune-structured", "--amount", "0.5",
                               "--finetune-steps", "5", "--out", out, *QUICK)
    assert rc == 0, err
    assert "report:" in stdout
    for name in ("model.safetensors", "model_config.json", "report.md", "compression.png", "summary.json",
                 "config.yaml", "finetune"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    original, pruned = summary["rows"]
    trained = json.loads((mlp_run / "model_config.json").read_text())["args"]["hidden"]
    assert pruned["hidden"] == [h // 2 for h in trained]
    assert pruned["parameters"] < original["parameters"] / 2
    assert summary["size_ratio"] == pytest.approx(pruned["size_bytes"] / original["size_bytes"])
    assert summary["size_ratio"] < 0.5
    model = load_model_dir(out)
    assert list(model.args.hidden) == pruned["hidden"]
    rc, stdout, err = run_main("eval", out)  # the folder is run-like: `scaletrain eval` reads it
    assert rc == 0, err
    assert json.loads(stdout)["val_accuracy"] == pytest.approx(summary["quality_after"])


@pytest.mark.slow
def test_a_run_without_final_weights_is_read_from_its_checkpoint(mlp_run, tmp_path):
    run = tmp_path / "ckpt-only"
    shutil.copytree(mlp_run, run)
    (run / "model.safetensors").unlink()
    out = tmp_path / "q"
    rc, _, err = run_main("compress", run, "--method", "int8-weight", "--out", out, *QUICK)
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert "checkpoints/step_" in summary["weights"]
    reference = json.loads((mlp_run / "summary.json").read_text())["val_accuracy"]
    assert summary["quality_before"] == pytest.approx(reference)  # the same weights as the export
    assert abs(summary["quality_after"] - summary["quality_before"]) <= 0.02
    assert summary["size_ratio"] < 0.3


def test_not_a_run_folder(tmp_path):
    line = one_error_line(*run_main("compress", tmp_path / "nope", "--method", "prune")[::2])
    assert "nope" in line and "run folder" in line


def test_unknown_method(mlp_run):
    line = one_error_line(*run_main("compress", mlp_run, "--method", "zip")[::2])
    assert "'zip'" in line and "prune-structured" in line


def test_bad_option_values_are_named(mlp_run):
    assert "--amount" in one_error_line(*run_main("compress", mlp_run, "--method", "prune", "--amount", "1.5")[::2])
    line = one_error_line(*run_main("compress", mlp_run, "--method", "int8-dynamic", "--finetune-steps", "3")[::2])
    assert "--finetune-steps" in line


def test_corrupted_weights_file(mlp_run, tmp_path):
    run = tmp_path / "corrupt"
    shutil.copytree(mlp_run, run)
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    line = one_error_line(*run_main("compress", run, "--method", "prune", *QUICK)[::2])
    assert "model.safetensors" in line


def test_wrong_architecture(mlp_run, tmp_path):
    run = tmp_path / "wrong"
    shutil.copytree(mlp_run, run)
    spec = json.loads((run / "model_config.json").read_text())
    trained = spec["args"]["hidden"]
    spec["args"]["hidden"] = [100, 64]
    (run / "model_config.json").write_text(json.dumps(spec))
    line = one_error_line(*run_main("compress", run, "--method", "prune", *QUICK)[::2])
    assert "model.safetensors" in line and f"model.hidden: {trained} in the weights file, [100, 64] here" in line


def test_an_occupied_output_folder_is_refused(mlp_run, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    line = one_error_line(*run_main("compress", mlp_run, "--method", "prune", "--out", tmp_path / "busy")[::2])
    assert "busy" in line
    assert (tmp_path / "busy" / "x").read_text() == "keep me"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_refused_before_anything_is_written(mlp_run, tmp_path):
    out = tmp_path / "out"
    line = one_error_line(*run_main("compress", mlp_run, "--method", "distill", "--device", "cuda",
                                    "--out", out, *QUICK)[::2])
    assert "--device cuda" in line
    assert not out.exists()


def test_a_compression_slower_than_the_original_warns_in_the_console_and_the_report(mlp_run, tmp_path, monkeypatch):
    from scaletrain.compress import latency

    def slow(models, make_input, **kw):  # every compressed model twice as slow as the original
        return {name: {"b1": 1.0 if name == "original" else 2.0, "b64": 3.0 if name == "original" else 6.0}
                for name in models}

    monkeypatch.setattr(latency, "measure", slow)
    out = tmp_path / "int8"
    rc, stdout, err = run_main("compress", mlp_run, "--method", "int8-weight", "--out", out, *QUICK)
    assert rc == 0, err
    assert "warning: int8-weight is slower than the original at batch 64: 0.50x" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["warnings"] and "0.50x" in summary["warnings"][0]
    assert "**warning: int8-weight is slower" in (out / "report.md").read_text()


def test_backend_is_only_for_int8_dynamic(mlp_run):
    rc, _, err = run_main("compress", mlp_run, "--method", "onnx-int8", "--backend", "torchao")
    assert "error: --backend: only --method int8-dynamic" in one_error_line(rc, err)
