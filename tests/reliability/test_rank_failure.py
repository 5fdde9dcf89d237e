"""Rank 0's failures reach every rank at once (2 gloo ranks under torchrun).

Rank 0 alone checks the run folder, finds the checkpoint and writes the run's files
(`ranks.on_main` / `ranks.main_only`); the other ranks wait for it in a broadcast. Any exception
there, not only bad input, must end them too, at once, instead of leaving them in the broadcast
until the collective timeout (300 s by default; 90 s here, and the test allows 120 s in all).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.dist, pytest.mark.slow]

WORKER = '''
import json, sys, time
from datetime import timedelta

import torch.distributed as dist

from scaletrain.errors import UserError
from scaletrain.train import ranks

dist.init_process_group("gloo", timeout=timedelta(seconds=90))


def fail(kind):
    if kind == "bug":
        raise ValueError("boom on rank 0")
    if kind == "input":
        raise UserError("train.run_dir: bad on rank 0")
    raise OSError(28, "No space left on device", "/full/disk/config.yaml")


out = {}
for call, kind in (("on_main", "bug"), ("on_main", "input"), ("main_only", "disk")):
    began = time.monotonic()
    try:
        getattr(ranks, call)(fail, kind)
        out[kind] = ["returned"]
    except BaseException as exc:
        out[kind] = [type(exc).__name__, str(exc), time.monotonic() - began]
out["shared"] = ranks.on_main(lambda: {"from": dist.get_rank()})
out["kept"] = ranks.main_only(lambda: "rank 0 only")
dist.barrier()  # every rank is still in step after the failures
with open(f"{sys.argv[1]}/rank{dist.get_rank()}.json", "w") as f:
    json.dump(out, f)
dist.destroy_process_group()
'''


def test_a_failure_on_rank_0_reaches_every_rank_at_once(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))

    # A bug: rank 0 keeps its own exception (and traceback); the others name it and exit 1.
    assert r0["bug"][:2] == ["ValueError", "boom on rank 0"]
    assert r1["bug"][:2] == ["RunFailure", "rank 0 failed: ValueError: boom on rank 0"]
    # Bad input reads the same on every rank (each exits 2 with the same line).
    assert r0["input"][:2] == r1["input"][:2] == ["UserError", "train.run_dir: bad on rank 0"]
    # A write that fails on rank 0 only (main_only: the result stays there).
    assert r0["disk"][0] == "OSError" and r1["disk"][0] == "RunFailure"
    assert "No space left on device" in r1["disk"][1] and r1["disk"][1].startswith("rank 0 failed: OSError")
    for kind in ("bug", "input", "disk"):
        assert r1[kind][2] < 30, (kind, r1[kind])  # at once, not after the 90 s collective timeout
    assert r0["shared"] == r1["shared"] == {"from": 0}
    assert r0["kept"] == "rank 0 only" and r1["kept"] is None
