"""Hugging Face models on 2 gloo ranks: `model.name=hf` trains under `scaletrain train` with fsdp
and its loss falls; `scaletrain verify` holds ddp and fsdp (with activation checkpointing) to the
one-process reference, with and without LoRA (an hf model's and a native Llama's started with
`model.init_from`); a user's own script runs the same layouts under torchrun through the Python API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hf_models
from conftest import _SUBPROCESS_ENV, run_cli

pytestmark = [pytest.mark.dist, pytest.mark.slow]
pytest.importorskip("transformers")
pytest.importorskip("peft")

QUIET = ["train.threads=1", "log.progress=false", "log.sample_tokens=0", "log.tensorboard=false",
         "train.eval_every=0", "train.final_eval_batches=1", "schedule.name=constant",
         "schedule.warmup_steps=0", "train.precision=fp32"]
SGD = ["optim.name=sgd", "optim.lr=0.5"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-dist")
    # model.name=hf trains it as it is; model.init_from reads it into the native Llama family.
    return {"llama": hf_models.llama_folder(root / "llama")}


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


def test_hf_llama_trains_with_fsdp_on_two_ranks_as_on_one(tmp_path, cache_dir, folders):
    common = ["gpt-tiny", *QUIET, *SGD, f"data.cache_dir={cache_dir}", "model.name=hf",
              f"model.path={folders['llama']}", "train.max_steps=12", "log.every=1", "train.batch_size=8"]
    code, out, err = run_cli("train", *common, "train.batch_size=16", f"train.run_dir={tmp_path / 'one'}",
                             cwd=tmp_path, timeout=300)
    assert code == 0, err[-3000:]
    code, out, err = run_cli("train", *common, "parallel.strategy=fsdp", "parallel.nproc=2",
                             "parallel.oversubscribe=true", f"train.run_dir={tmp_path / 'two'}", cwd=tmp_path, timeout=300)
    assert code == 0, err[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert two[-1] < two[0] - 0.3  # it learns
    assert two == pytest.approx(one, abs=1e-5)  # the same global batch of 16: the same steps
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["parallel_strategy"] == "fsdp" and summary["world_size"] == 2


@pytest.mark.parametrize("strategy, extra", [
    ("ddp", []),
    ("fsdp", ["parallel.activation_checkpointing=true"]),
    ("fsdp", ["model.lora.rank=4", "parallel.activation_checkpointing=true"]),
    ("ddp", ["model.lora.rank=4"]),
], ids=["ddp", "fsdp-ac", "fsdp-lora", "ddp-lora"])
def test_verify_an_hf_model(tmp_path, cache_dir, folders, strategy, extra):
    code, out, err = run_cli("verify", "gpt-tiny", *QUIET, *SGD, f"data.cache_dir={cache_dir}", "model.name=hf",
                             f"model.path={folders['llama']}", f"parallel.strategy={strategy}", "parallel.nproc=2",
                             "parallel.oversubscribe=true", *extra, "--steps", "2", cwd=tmp_path, timeout=300)
    assert code == 0, out + err[-3000:]
    assert "verified" in out


def test_verify_a_lora_fine_tune_of_a_pretrained_llama_with_fsdp(tmp_path, cache_dir, folders):
    code, out, err = run_cli("verify", "llama-tiny", *QUIET, *SGD, f"data.cache_dir={cache_dir}",
                             f"model.init_from={folders['llama']}", "model.lora.rank=4", "parallel.strategy=fsdp",
                             "parallel.nproc=2", "parallel.oversubscribe=true", "--steps", "2", cwd=tmp_path, timeout=300)
    assert code == 0, out + err[-3000:]
    assert "verified" in out


def test_a_users_script_under_torchrun(tmp_path):
    """README's "Bring your own model": a transformers model and dict rows through the API, fsdp and
    activation checkpointing on 2 ranks, equal to the same script in one process."""
    script = Path(__file__).with_name("hf_api_script.py")
    env = {**os.environ, **_SUBPROCESS_ENV, "HF_HUB_OFFLINE": "1"}
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "single"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          str(script), str(tmp_path / "two"), "fsdp"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _losses(tmp_path / "one" / "run"), _losses(tmp_path / "two" / "run")
    assert len(a) == 6 and b == pytest.approx(a, abs=1e-5) and a[-1] < a[0] - 0.5
    summary = json.loads((tmp_path / "two" / "run" / "summary.json").read_text())
    assert summary["parallel_strategy"] == "fsdp" and (tmp_path / "two" / "run" / "model.safetensors").is_file()
