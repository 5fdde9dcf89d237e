"""train.precision=auto: the trainer runs the precision hardware.choose_precision picks, and says
which and why in the log and summary.json."""

from __future__ import annotations

import json

import pytest

from conftest import run_main
from scaletrain import hardware


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_is_run_and_reported(tmp_path, cache_dir, monkeypatch, native):
    feats = {"avx2": True, "avx512f": native, "avx512_bf16": native, "amx": False, "vnni": native}
    monkeypatch.setattr(hardware, "cpu_features", lambda: feats)
    # A measured check that bf16 wins 2x where the flag is set (no real measurement in a test).
    monkeypatch.setattr(hardware, "matmul_peak_flops",
                        lambda dtype, device="cpu", **kw: 2e11 if str(dtype) == "torch.bfloat16" else 1e11)
    run = tmp_path / "run"
    code, out, err = run_main("train", "gpt-tiny", "train.threads=1", "log.progress=false", "train.precision=auto",
                              f"data.cache_dir={cache_dir}", f"train.run_dir={run}", "train.max_steps=3", "schedule.warmup_steps=0",
                              "train.eval_every=0", "train.final_eval_batches=1", "log.sample_tokens=0")
    assert code == 0, out + err
    summary = json.loads((run / "summary.json").read_text())
    expected = "bf16" if native else "fp32"
    assert summary["precision"] == expected
    assert ("measured at 2x fp32" in summary["precision_reason"]) if native else ("no native bf16" in summary["precision_reason"])
    assert f"precision: {expected} (auto: " in out + err
    assert summary["mfu_peak_dtype"] == ("bfloat16" if native else "float32")
