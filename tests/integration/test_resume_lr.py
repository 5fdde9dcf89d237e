"""A resume may change the learning rate: the config's optim.lr wins over the checkpoint's."""

from __future__ import annotations

import json

import pytest

from conftest import FAST, run_main


def test_resume_with_another_lr_uses_it(tmp_path, cache_dir):
    common = [*FAST, f"data.cache_dir={cache_dir}", "train.eval_every=0", "log.every=1", "log.sample_tokens=0",
              "train.final_eval_batches=1", "schedule.name=constant", "schedule.warmup_steps=0",
              f"train.run_dir={tmp_path / 'run'}"]
    code, out, err = run_main("train", "gpt-tiny", *common, "train.max_steps=2", "optim.lr=0.001")
    assert code == 0, out + err
    code, out, err = run_main("train", "gpt-tiny", *common, "train.max_steps=4", "optim.lr=0.0005",
                              "train.resume=auto")
    assert code == 0, out + err
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
           if r.get("split") == "train"}
    assert lrs[2] == pytest.approx(1e-3) and lrs[4] == pytest.approx(5e-4)
