"""Every tensor that reaches a collective lies on the layout's device, and every one scaletrain
builds for a collective asked `collective_device()` for it (see collective_probe.py).

On CUDA a CPU tensor in an NCCL collective fails the run; on the CPU here every device is the CPU,
so the second rule is what makes the test fail when a call site forgets the device. The same probe
runs on a GPU in benchmarks/gpu_check.sh (`--expect cuda`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from conftest import _SUBPROCESS_ENV
from collective_probe import Watch

PROBE = Path(__file__).with_name("collective_probe.py")

# A few steps that pass every edge of the loop that talks to the other ranks: the guard's verdict
# (every step), a log line's gathered timings (log.every=1), rank 0's clock (max_minutes), a
# checkpoint, the final evaluation and the consolidated export.
RUN = ["train.threads=1", "log.progress=false", "log.sample_tokens=0", "log.tensorboard=false",
       "train.precision=fp32", "train.max_steps=2", "log.every=1", "train.eval_every=0", "train.final_eval_batches=1", "train.checkpoint_every=1", "checkpoint.keep_last=1",
       "train.max_minutes=60", "schedule.warmup_steps=0"]

# What each layout must have been seen doing: the trainer's own collectives (guard, gathered
# timings) and the layout's (DDP's are in C++, out of sight; FSDP's, DTensor's and the pipeline's are
# Python calls). zero1 is ddp plus ZeroRedundancyOptimizer's broadcasts of parameters (on their own
# device): left out to keep the test near a minute.
SEEN = {
    "ddp": ("all_reduce scaletrain/train/guard.py", "all_gather scaletrain/train/ranks.py"),
    "fsdp": ("all_reduce scaletrain/train/guard.py", "all_gather_"),
    "tp": ("all_reduce scaletrain/train/guard.py", "funcol."),
    "pp": ("all_gather scaletrain/train/ranks.py", "isend"),
}


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("strategy", SEEN)
def test_every_collective_runs_on_the_layout_device(tmp_path, cache_dir, strategy):
    out = tmp_path / "probe"
    env = {**os.environ, **_SUBPROCESS_ENV, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(PROBE),
           "--out", str(out), "--expect", "cpu", "--", "train", "gpt-tiny", *RUN, f"data.cache_dir={cache_dir}",
           f"parallel.strategy={strategy}", "parallel.nproc=2", f"train.run_dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for rank in (0, 1):
        report = json.loads((out / f"collectives-rank{rank}.json").read_text())
        assert report["violations"] == [], report["violations"]
        assert set(report["devices"]) == {"cpu"}
        for wanted in SEEN[strategy]:  # the watch saw the collectives it is meant to check
            assert any(site.startswith(wanted) for site in report["sites"]), (wanted, report["sites"])


# ---- the checks can fail -------------------------------------------------------------------------

FORGETS = """
import torch, torch.distributed as dist
def flag():
    t = torch.tensor([1.0])  # no device: the default device, the CPU even on a GPU rank
    dist.all_reduce(t)
"""
ASKS = """
import torch, torch.distributed as dist
from scaletrain.parallel.dist import collective_device
def flag():
    t = torch.tensor([1.0], device=collective_device())
    dist.all_reduce(t)
"""


def _as_scaletrain_module(source: str):
    """`flag` of `source` compiled as if it were a scaletrain module (what the watch looks at)."""
    scope = {"__name__": "scaletrain.planted"}
    exec(compile(source, "scaletrain/planted.py", "exec"), scope)
    return scope["flag"]


@pytest.fixture
def one_rank_group(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("source, expected, violation", [
    (FORGETS, "cpu", "without device=collective_device()"),
    (ASKS, "cpu", None),
    (ASKS, "meta", "a tensor on cpu, the layout's device is meta"),
], ids=["forgotten-device", "asked", "other-device"])
def test_the_watch_names_a_call_site_that_breaks_a_rule(one_rank_group, source, expected, violation):
    flag = _as_scaletrain_module(source)
    watch = Watch(torch.device(expected)).install()
    try:
        flag()
    finally:
        watch.uninstall()
    assert watch.calls["all_reduce"] == 1, watch.sites
    if violation is None:
        assert watch.violations == []
    else:
        assert any(violation in v and "scaletrain/planted.py" in v for v in watch.violations), watch.violations
    assert not hasattr(dist.all_reduce, "__watched__")  # uninstalled
