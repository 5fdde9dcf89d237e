"""The Llama presets through the CLI: llama-tiny trains (and samples), plan answers for the 8B."""

from __future__ import annotations

import json
import math

import pytest


def test_tiny_llama_learns(tmp_path, fast, run_main):
    run = tmp_path / "run"
    code, _, err = run_main("train", "llama-tiny", *fast, "log.tensorboard=false", f"train.run_dir={run}",
                            "train.max_steps=120", "train.eval_every=0")
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["split"] == "train")["loss"]
    vocab = 512
    assert summary["steps"] == 120 and summary["stopped_by"] == "max_steps"
    assert abs(first - math.log(vocab)) < 0.5  # starts near uniform over the vocabulary
    assert summary["val_loss"] < math.log(vocab) - 1.2
    assert summary["val_loss"] < summary["unigram_loss"] - 0.3  # learned more than token frequencies
    assert summary["train_loss"] < first - 1.0
    assert isinstance(summary["sample"], str) and summary["sample"].startswith("def ")  # generate ran
    spec = json.loads((run / "model_config.json").read_text())
    assert spec["name"] == "llama" and spec["args"]["n_kv_head"] == 2 and spec["args"]["d_ff"] == 192
    # The finished run serves eval and generate like a GPT run.
    code, text, err = run_main("eval", run, "--batches", "2")
    assert code == 0, err
    assert json.loads(text)["val_loss"] < math.log(vocab) - 1.0
    outs = [run_main("generate", run, "--tokens", "12", "--seed", "3") for _ in range(2)]
    assert outs[0][0] == 0 and outs[0][1].startswith("def ") and outs[0][1] == outs[1][1], outs[0][2]


def test_plan_answers_for_the_8b_on_gpus_and_one_cpu(run_main):
    code, text, err = run_main("plan", "llama3.1-8b", "--world-size", "8", "--device", "h100", "--json")
    assert code == 0, err
    gpus = json.loads(text)
    assert gpus["parameters"] == 8_030_261_248 and gpus["world_size"] == 8
    assert gpus["best"] is not None and gpus["best"]["fits"]
    # 8 B parameters need their weights, gradients and Adam state sharded over the 8 GPUs.
    assert gpus["best"]["strategy"] in ("fsdp", "fsdp-zero2", "tp")
    assert {"ddp", "zero1", "fsdp", "fsdp-zero2", "tp", "fsdp+tp"} == {c["strategy"] for c in gpus["candidates"]}
    code, text, err = run_main("plan", "llama3.1-8b", "train.threads=1", "--world-size", "1", "--device", "cpu")
    assert code == 0, err
    assert "plan: llama with 8030.26 M parameters" in text
    # 16 bytes of weights, gradients and Adam state per parameter alone: ~120 GiB on one host.
    assert "no layout fits" in text or "recommended: single" in text


@pytest.mark.parametrize("preset", ["llama-tiny", "llama3.2-1b"])
def test_plan_answers_for_the_other_presets(run_main, preset):
    code, text, err = run_main("plan", preset, "--world-size", "2", "--device", "h100", "--json")
    assert code == 0, err
    assert json.loads(text)["best"] is not None
