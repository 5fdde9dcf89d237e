"""profile on a real tiny run: the phases add up to the step, the trace is Chrome's JSON format,
and the top ops are the model's matmuls."""

from __future__ import annotations

import json

import pytest


def test_profile_splits_the_step_and_writes_a_trace(tmp_path, fast, run_main):
    out = tmp_path / "prof"
    code, text, err = run_main("profile", "gpt-tiny", *fast, "--steps", "3", "--warmup", "1", "--out", out)
    assert code == 0, err
    rep = json.loads((out / "profile.json").read_text())
    phases = rep["phases_seconds_per_step"]
    assert set(phases) == {"data", "forward", "backward", "optimizer", "communication"}
    assert sum(phases.values()) == pytest.approx(rep["step_seconds"])
    assert phases["forward"] > 0 and phases["backward"] > phases["optimizer"] > 0
    assert phases["communication"] == 0.0  # one process: no collectives
    assert sum(rep["phases_fraction"].values()) == pytest.approx(1.0)
    names = [op["name"] for op in rep["top_ops"]]
    assert "aten::mm" in names or "aten::addmm" in names
    trace = json.loads((out / "trace.json").read_text())
    ranges = {e.get("name") for e in trace["traceEvents"]}
    assert {"data", "forward", "backward", "optimizer"} <= ranges
    assert "step time split" in text and "Chrome trace" in text


def test_profile_refuses_bad_input(tmp_path, run_main):
    code, _, err = run_main("profile", "gpt-tiny", "--steps", "0")
    assert code == 2 and "--steps" in err
    code, _, err = run_main("profile", "gpt-tiny", "parallel.strategy=ddp", "parallel.nproc=2")
    assert code == 2 and "torchrun" in err
