"""schedule.budget=time end to end: the step count is fitted, the schedule ends at it, and a run
interrupted after the fits and resumed is bit for bit the uninterrupted one (every duration fixed by
`budget.FixedClock`, so both runs fit the same count)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import FAST, run_main
from scaletrain.config.load import load_config
from scaletrain.train import budget
from scaletrain.train.build import build_trainer


class Interrupted(Exception):
    pass


def _overrides(cache_dir, run_dir) -> list[str]:
    return [*FAST, f"data.cache_dir={cache_dir}", f"train.run_dir={run_dir}", "schedule.budget=time",
            "train.max_minutes=1", "train.max_steps=100000", "schedule.warmup_steps=8", "train.eval_every=10",
            "train.eval_batches=2", "train.checkpoint_every=10", "checkpoint.keep_last=5", "log.every=5"]


def _fixed_clock(monkeypatch):
    # 1 s a step, 10 ms an evaluated window, 0.5 s a checkpoint, 2 s before the first step: about 50
    # steps fit the minute (the real steps take milliseconds; the real guard never fires).
    monkeypatch.setattr(budget, "CLOCK", budget.FixedClock(step=1.0, eval_sample=0.01, checkpoint=0.5, startup=2.0))


def test_fitted_run_resumed_is_the_uninterrupted_run(tmp_path, cache_dir, monkeypatch):
    _fixed_clock(monkeypatch)
    code, out, err = run_main("train", "gpt-tiny", *_overrides(cache_dir, tmp_path / "whole"))
    assert code == 0, out + err
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    fitted = whole["budget"]["fitted_steps"]
    # Fitted after 5 timed steps (5 s, over 3 % of the minute), again at every evaluation (10 % past);
    # with every duration as predicted, each refit keeps the count.
    fits = whole["budget"]["fits"]
    assert [f["step"] for f in fits] == [6, *range(10, fitted, 10)]
    assert len({f["total"] for f in fits[1:]}) == 1
    assert 30 < fitted < 60 and whole["steps"] == fitted and whole["stopped_by"] == "max_steps"
    lrs = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    last_lr = [r["lr"] for r in lrs if r.get("split") == "train"][-1]
    # cosine with min_lr_ratio 0.1 ends at 0.1 x lr at the fitted count: the decay ended with the budget
    assert last_lr == pytest.approx(0.1 * 3e-3, rel=0.05)

    # The same run, stopped at step 25 (after both fits) and resumed from its checkpoint at step 20.
    _fixed_clock(monkeypatch)
    part = tmp_path / "part"
    trainer = build_trainer(load_config("gpt-tiny", _overrides(cache_dir, part)))

    def stop_at_25(trainer, step, loss):
        if step == 25:
            raise Interrupted

    trainer.step_hook = stop_at_25
    with pytest.raises(Interrupted):
        trainer.fit()
    _fixed_clock(monkeypatch)
    code, out, err = run_main("train", "gpt-tiny", *_overrides(cache_dir, part), "train.resume=auto")
    assert code == 0, out + err
    resumed = json.loads((part / "summary.json").read_text())
    assert resumed["budget"]["fitted_steps"] == fitted and resumed["steps"] == fitted
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(part / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
