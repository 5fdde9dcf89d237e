"""The layouts that combine two dimensions, and pipelining's precision and guard, under torchrun.

`verify` runs pp+fsdp, pp+ddp and fsdp+tp on 4 gloo ranks (2 x 2 meshes; this machine has fewer
cores, hence parallel.oversubscribe) and GPipe on 2, against the one-process reference. A pipeline
at train.precision=bf16 computes its matmuls in bf16 (autocast in each stage, or FSDP's mixed
precision under pp+fsdp) and keeps fp32 weights and gradients; the guard catches a planted NaN
there and skips, rolls back or stops as asked. Steps are kept to 2-3: these are the slowest tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import _SUBPROCESS_ENV, run_cli

from distributed_helpers import QUIET, quiet, verified  # noqa: F401 (quiet is a fixture)

pytestmark = [pytest.mark.dist, pytest.mark.slow]

@pytest.mark.parametrize("strategy, ranks, extra", [
    ("pp+fsdp", 4, ["optim.name=sgd", "optim.lr=0.5"]),
    ("pp+ddp", 4, ["optim.name=sgd", "optim.lr=0.5", "parallel.pp_schedule=gpipe"]),
    ("fsdp+tp", 4, ["optim.name=sgd", "optim.lr=0.5"]),
    ("pp", 2, ["optim.name=sgd", "optim.lr=0.5", "parallel.pp_schedule=gpipe"]),
], ids=["pp+fsdp-x4", "pp+ddp-gpipe-x4", "fsdp+tp-x4", "pp-gpipe-x2"])
def test_layout_matches_single_process_reference(tmp_path, quiet, strategy, ranks, extra):
    verified(tmp_path, "gpt-tiny", quiet, strategy, ranks, extra)


def _torchrun(ranks: int, *args: str, env: dict | None = None, cwd: Path, timeout: float = 300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **_SUBPROCESS_ENV, **(env or {})})


@pytest.mark.parametrize("strategy, ranks", [("pp", 2), ("pp+fsdp", 4)])
def test_pipeline_trains_in_bf16(tmp_path, strategy, ranks):
    probe = Path(__file__).with_name("pp_precision_probe.py")
    proc = _torchrun(ranks, str(probe), str(tmp_path), strategy, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(ranks)]
    for r in reports:
        assert r["matmuls"] > 0 and r["matmul_dtypes"] == ["torch.bfloat16"], r
        assert r["weight_dtypes"] == ["torch.float32"] and r["grad_dtypes"] == ["torch.float32"], r
        assert r["grads"] == r["params"]  # every weight of every stage got its gradient
    assert torch.isfinite(torch.tensor([r["loss"] for r in reports])).all()


@pytest.mark.parametrize("action", ["skip", "rollback", "stop"])
def test_guard_catches_a_planted_nan_under_pp(tmp_path, quiet, action):
    run = tmp_path / "run"
    args = [*quiet, "train.precision=bf16", "parallel.strategy=pp", "parallel.nproc=2", "train.max_steps=3",
            "train.checkpoint_every=1", "log.every=1", f"guard.action={action}", f"train.run_dir={run}"]
    env = {**os.environ, **_SUBPROCESS_ENV, "SCALETRAIN_FAULT": "nan:step=2"}
    proc = subprocess.run([sys.executable, "-m", "scaletrain", "train", "gpt-tiny", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    text = proc.stdout + proc.stderr
    if action == "stop":
        assert summary["stopped_by"] == "non_finite_loss" and summary["steps"] == 1
        assert "error: step 2: " in text and "stopping (guard.action=stop)" in text
    elif action == "rollback":
        assert summary["steps"] == 3 and "rolled back to step_00000001" in text
    else:
        assert summary["steps"] == 3 and train[-1]["skipped_steps"] == 1
    weights = load_file(run / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())  # the NaN never reached a weight
