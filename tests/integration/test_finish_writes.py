"""A finished run always leaves its weights and summary, even when the end-of-run extras fail: a
model trained into NaN cannot be sampled (summary.json gets `sample_error`), and a plot or report
that cannot be written is a warning line, not a lost run."""

from __future__ import annotations

import json

from conftest import run_main


def test_a_diverged_run_with_failing_plot_and_report_still_writes_weights_and_summary(tmp_path, fast, monkeypatch):
    import scaletrain.train.trainer as trainer

    def broken(*args, **kwargs):
        raise OSError("disk quota exceeded")

    monkeypatch.setattr(trainer, "plot_losses", broken)
    monkeypatch.setattr(trainer, "write_report", broken)
    run = tmp_path / "run"
    # lr 1e30 with the guard off: the weights blow up to Inf/NaN, which the sampler would feed to
    # torch.multinomial.
    code, out, err = run_main("train", "gpt-tiny", *fast, "train.max_steps=2", "schedule.warmup_steps=0",
                              "optim.lr=1e30", "guard.action=off", "train.eval_every=0", "train.final_eval_batches=1",
                              "log.tensorboard=false", f"train.run_dir={run}")
    assert code == 0, err
    for name in ("model.safetensors", "model_config.json", "summary.json"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and "sample" not in summary
    assert summary["sample_error"] == "ValueError: the model's outputs are not finite (NaN or Inf weights)"
    assert f"warning: could not write {run / 'loss.png'} (OSError: disk quota exceeded)" in err
    assert f"warning: could not write {run / 'report.md'} (OSError: disk quota exceeded)" in err
    assert "Traceback" not in err
    assert "no sample: ValueError" in out
