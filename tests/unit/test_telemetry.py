"""Telemetry (jsonl, the TensorBoard tracker, progress bar or step lines) and the report/plot/atomic helpers."""

import io
import json
import logging
import os

import pytest
from rich.console import Console

from scaletrain.train.report import (
    plot_losses,
    read_metrics,
    write_json_atomic,
    write_report,
    write_text_atomic,
)
from scaletrain.train.telemetry import Telemetry, humanize
from scaletrain.train.trackers import Trackers

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _train(i, loss=4.0):
    return {"loss": loss, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_second": 12345.0,
            "elapsed": float(i)}


def _quiet_console():
    # A StringIO console is not a terminal, like stderr piped to a file.
    buf = io.StringIO()
    return Console(file=buf, width=120), buf


def _terminal_console():
    buf = io.StringIO()
    return Console(file=buf, width=120, force_terminal=True), buf


def test_jsonl_tensorboard_and_log_lines(tmp_path, said):
    lines = said
    console, buf = _quiet_console()
    trackers = Trackers(["tensorboard"], tmp_path, config={"optim": {"lr": 0.1}})
    with Telemetry(tmp_path, enabled=True, total_steps=4, console=console, trackers=trackers) as tel:
        for step in (1, 2, 3, 4):
            tel.log_train(step, _train(step, loss=5.0 - step))
        tel.log_eval(4, {"val_loss": 4.12, "val_ppl": 61.6})
        tel.message("hello [not markup")
        tel.message("warning: careful")
    tel.close()  # idempotent
    trackers.finish({"val_loss": 4.12})

    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 4]
    assert recs[0] == {"step": 1, "split": "train", **_train(1, loss=4.0)}
    assert recs[-1] == {"step": 4, "split": "val", "val_loss": 4.12, "val_ppl": 61.6}
    # Not a terminal: no bar, a line per logged step, everything through the logger.
    assert buf.getvalue() == ""
    assert lines == ["step 1/4 | loss 4.0000 | 12.3k tok/s", "step 2/4 | loss 3.0000 | 12.3k tok/s",
                     "step 3/4 | loss 2.0000 | 12.3k tok/s", "step 4/4 | loss 1.0000 | 12.3k tok/s",
                     "step 4 | val loss 4.1200 | ppl 61.6", "hello [not markup", "warning: careful"]

    tb = tmp_path / "tensorboard"
    assert any(p.name.startswith("events.out.tfevents.") for p in tb.iterdir())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [(e.step, e.value) for e in loss] == [(1, 4.0), (2, 3.0), (3, 2.0), (4, 1.0)]
    assert acc.Scalars("val/loss")[0].value == pytest.approx(4.12)  # "val_" prefix dropped
    assert acc.Scalars("val/ppl")[0].value == pytest.approx(61.6)
    assert {"config/text_summary", "summary/text_summary"} <= set(acc.Tags()["tensors"])


def test_a_terminal_gets_the_bar_instead_of_step_lines(tmp_path, said):
    lines = said
    console, buf = _terminal_console()
    with Telemetry(tmp_path, enabled=True, total_steps=3, console=console) as tel:
        assert tel.bar
        for step in (1, 2, 3):
            tel.log_train(step, _train(step))
        tel.log_eval(3, {"val_loss": 1.5})
    assert lines == ["step 3 | val loss 1.5000"]  # evaluations are logged; steps are on the bar
    assert "step 3/3" in buf.getvalue()
    # A logger set above INFO (scaletrain -q): no bar either; progress=False: lines on a terminal too.
    logging.getLogger("scaletrain").setLevel(logging.WARNING)
    assert not Telemetry(tmp_path / "q", enabled=True, total_steps=3, console=_terminal_console()[0]).bar
    logging.getLogger("scaletrain").setLevel(logging.INFO)
    assert not Telemetry(tmp_path / "f", enabled=True, total_steps=3, progress=False,
                         console=_terminal_console()[0]).bar


def test_resume_truncates_to_start_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "split": "train", "loss": 1.0}) for s in range(1, 7)]
    lines.insert(0, json.dumps({"event": "start"}))
    path.write_text("\n".join(lines) + '\n{"step": 7, "spl')  # crash mid-line
    with Telemetry(tmp_path, enabled=True, total_steps=10, start_step=4,
                   progress=False, console=_quiet_console()[0]) as tel:
        tel.log_train(5, _train(5))
    recs = read_metrics(path)
    assert recs[0] == {"event": "start"}
    assert [r["step"] for r in recs[1:]] == [1, 2, 3, 4, 5]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_train_records_are_written_out_within_a_second_and_at_once_by_an_eval_or_flush(tmp_path, monkeypatch):
    """Train records wait (a write per record cost ~1 % of a 1 ms step) at most FLUSH_EVERY_S; an
    evaluation, flush() (the trainer's, before a checkpoint) and close() write everything kept."""
    from scaletrain.train import telemetry

    path = tmp_path / "metrics.jsonl"
    now = [1000.0]
    monkeypatch.setattr(telemetry.time, "monotonic", lambda: now[0])
    tel = Telemetry(tmp_path, enabled=True, total_steps=10, progress=False, console=_quiet_console()[0])
    tel.log_train(1, _train(1))
    tel.log_train(2, _train(2))
    assert read_metrics(path) == []  # kept
    tel.flush()
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    tel.log_train(3, _train(3))
    now[0] += telemetry.FLUSH_EVERY_S  # a second later, the next record writes both
    tel.log_train(4, _train(4))
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]
    tel.log_train(5, _train(5))
    tel.log_eval(5, {"val_loss": 3.0})  # an evaluation writes what was kept, then itself
    assert [(r["step"], r["split"]) for r in read_metrics(path)][-2:] == [(5, "train"), (5, "val")]
    tel.log_train(6, _train(6))
    tel.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5, 5, 6]


def test_disabled_creates_nothing(tmp_path):
    run = tmp_path / "run"
    tel = Telemetry(run, enabled=False, total_steps=10, start_step=3)
    tel.log_train(1, _train(1))
    tel.log_eval(1, {"loss": 1.0})
    tel.message("x")
    tel.close()
    assert not run.exists()


def test_samples_unit_and_no_progress_lines(tmp_path, said):
    lines = said
    console, buf = _quiet_console()
    with Telemetry(tmp_path, enabled=True, total_steps=2, unit="samples",
                   progress=False, console=console) as tel:
        tel.log_train(1, {"loss": 0.5, "lr": 0.1, "grad_norm": 1.0,
                          "samples_per_second": 950.0, "elapsed": 1.0})
    assert lines == ["step 1/2 | loss 0.5000 | 950 samples/s"]
    assert humanize(12345) == "12.3k" and humanize(2.5e6) == "2.5M"
    with pytest.raises(ValueError):
        Telemetry(tmp_path, enabled=True, total_steps=1, unit="bytes")


def test_read_metrics_skips_trailing_partial(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 1}\n{"step": 2}\n{"st')
    assert read_metrics(p) == [{"step": 1}, {"step": 2}]
    p.write_text('{"step": 1}\n{"st\n{"step": 2}\n')
    with pytest.raises(ValueError):
        read_metrics(p)


@pytest.mark.parametrize("with_val", [False, True])
def test_plot_losses_png(tmp_path, with_val):
    recs = [{"step": s, "split": "train", "loss": 5.0 / s} for s in range(1, 30)]
    if with_val:
        recs += [{"step": s, "split": "val", "loss": 4.0 / s, "accuracy": s / 30} for s in (10, 20)]
    out = tmp_path / "loss.png"
    plot_losses(recs, out, "test run")
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert os.listdir(tmp_path) == ["loss.png"]


def test_plot_single_record(tmp_path):
    out = tmp_path / "loss.png"
    plot_losses([{"step": 1, "split": "train", "loss": 3.0}], out, "one")
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_write_report(tmp_path):
    config = {"run": {"name": "tiny-run"}, "model": {"d_model": 64, "dims": (1, 2)},
              "data": {"path": tmp_path}}
    summary = {"val_loss": 2.345678, "val_bpb": 1.23456, "tokens_per_second": 1234567.8,
               "mfu": 0.1234, "peak_memory_bytes": 3 * 2**30, "wall_seconds": 300.0,
               "steps": 1000, "matmul_peak_flops": 8.9e10, "sample": "def f():\n    pass"}
    path = write_report(tmp_path, config=config, summary=summary, sample="def f():\n    pass",
                        extra_sections={"Notes": "all good"})
    text = path.read_text()
    assert path == tmp_path / "report.md"
    assert "tiny-run" in text
    for value in ("2.3457", "1.235", "1,234,568", "12.34%", "3.00 GiB", "5.0 min", "1,000",
                  "89.00 GFLOP/s"):
        assert value in text
    assert "![loss](loss.png)" in text
    assert "| sample |" not in text  # multi-line values stay out of the table
    assert "```python\ndef f():\n    pass\n```" in text
    assert "## Notes" in text and "all good" in text
    assert "```yaml\nrun:\n  name: tiny-run\nmodel:\n  d_model: 64\n" in text
    assert os.listdir(tmp_path) == ["report.md"]


def test_atomic_helpers(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a.json").read_text() == '{\n  "b": 1,\n  "a": [\n    1,\n    2\n  ]\n}\n'
    write_text_atomic(tmp_path / "sub" / "t.txt", "hi")
    assert (tmp_path / "sub" / "t.txt").read_text() == "hi"
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "bad.json", {"x": object()})
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "sub", "t.txt"]
