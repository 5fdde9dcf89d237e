"""What the torchrun tests share (imported by them; not a conftest: tests/conftest.py holds that name): overrides that keep a short parallel run quiet and comparable, and
`verified(...)`, one `scaletrain verify` of a layout against the one-process reference."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli

QUIET = ["train.threads=1", "log.progress=false", "log.sample_tokens=0", "log.tensorboard=false",
         "train.eval_every=0", "train.final_eval_batches=1", "schedule.name=constant",
         "schedule.warmup_steps=0", "train.precision=fp32"]


@pytest.fixture
def quiet(cache_dir) -> list[str]:
    return [*QUIET, f"data.cache_dir={cache_dir}"]


def verified(tmp_path, preset: str, quiet: list[str], strategy: str, ranks: int, extra: list[str]) -> None:
    """Two steps of `strategy` on `ranks` gloo ranks match the reference, and the steps changed the
    weights (so the comparison is not vacuous)."""
    code, out, err = run_cli("verify", preset, *quiet, f"parallel.strategy={strategy}", f"parallel.nproc={ranks}",
                             "parallel.oversubscribe=true", *extra, "--steps", "2", "--keep", tmp_path / "verify",
                             cwd=tmp_path, timeout=300)
    assert code == 0, out + err
    assert "verified" in out
    first = load_file(tmp_path / "verify" / "layout" / "step_00001.safetensors")
    second = load_file(tmp_path / "verify" / "layout" / "step_00002.safetensors")
    assert any(not torch.equal(first[k], second[k]) for k in first)
