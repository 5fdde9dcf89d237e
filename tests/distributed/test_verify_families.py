"""`scaletrain verify` for the Llama family in every layout, as tests/distributed/test_parallel.py and
test_layouts.py do for the GPT: each layout's first steps against the one-process reference (2 gloo
ranks, or 4 for the 2-D meshes), both pipeline schedules. SGD keeps the comparison tight (Adam
magnifies rounding in near-zero gradients; docs/parallel.md states the tolerances).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli

pytestmark = [pytest.mark.dist, pytest.mark.slow]

QUIET = ["train.threads=1", "log.progress=false", "log.sample_tokens=0", "log.tensorboard=false",
         "train.eval_every=0", "train.final_eval_batches=1", "schedule.name=constant",
         "schedule.warmup_steps=0", "train.precision=fp32", "optim.name=sgd", "optim.lr=0.5"]

LAYOUTS = [
    ("ddp", 2, []),
    ("zero1", 2, []),
    ("fsdp", 2, ["parallel.activation_checkpointing=true"]),
    ("tp", 2, []),
    ("pp", 2, ["parallel.pp_schedule=1f1b"]),
    ("pp", 2, ["parallel.pp_schedule=gpipe"]),
    ("fsdp+tp", 4, []),
    ("pp+fsdp", 4, []),
    ("pp+ddp", 4, ["parallel.pp_schedule=gpipe"]),
]


@pytest.mark.parametrize("strategy, ranks, extra", LAYOUTS,
                         ids=[f"{s}{'-' + e[0].split('=')[1] if e else ''}-x{r}" for s, r, e in LAYOUTS])
def test_llama_layout_matches_single_process_reference(tmp_path, cache_dir, strategy, ranks, extra):
    code, out, err = run_cli("verify", "llama-tiny", *QUIET, f"data.cache_dir={cache_dir}",
                             f"parallel.strategy={strategy}", f"parallel.nproc={ranks}",
                             "parallel.oversubscribe=true", *extra, "--steps", "2", "--keep", tmp_path / "verify",
                             cwd=tmp_path, timeout=300)
    assert code == 0, out + err
    assert "verified" in out
    first = load_file(tmp_path / "verify" / "layout" / "step_00001.safetensors")
    second = load_file(tmp_path / "verify" / "layout" / "step_00002.safetensors")
    assert any(not torch.equal(first[k], second[k]) for k in first)  # the comparison is not vacuous
