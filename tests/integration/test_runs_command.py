"""`scaletrain runs`: one table of the runs' summaries, --json, and a plot of their validation curves."""

from __future__ import annotations

import json

from scaletrain.config.load import load_config
from scaletrain.train.build import build_trainer

PNG = b"\x89PNG\r\n\x1a\n"


def _train(fast, run_dir, *overrides):
    cfg = load_config("mlp-digits", [*fast, "log.trackers=[]", "train.max_steps=40", "train.eval_every=20",
                                     f"train.run_dir={run_dir}", *overrides])
    return build_trainer(cfg).fit()


def test_a_table_json_and_plot_of_finished_and_running_runs(tmp_path, fast, run_main):
    a = _train(fast, tmp_path / "a")
    b = _train(fast, tmp_path / "b", "optim.lr=3e-3")
    running = tmp_path / "c"  # a run still going: metrics only, no summary yet
    running.mkdir()
    (running / "metrics.jsonl").write_text(json.dumps({"step": 10, "split": "train", "loss": 1.5}) + "\n"
                                           + json.dumps({"step": 10, "split": "val", "val_loss": 1.4}) + "\n")
    code, out, err = run_main("runs", tmp_path / "a", tmp_path / "b", running, "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["a", "b", "c"]
    for row, summary in zip(rows, (a, b)):
        assert row["finished"] and row["steps"] == 40 and row["stopped_by"] == "max_steps"
        for key in ("train_loss", "val_loss", "val_accuracy", "mfu", "wall_seconds"):
            assert row[key] == summary[key], key
        assert row["throughput"] == summary["samples_per_second"] and row["unit"] == "samples"
    assert rows[2] == {**rows[2], "finished": False, "steps": 10, "train_loss": 1.5, "val_loss": 1.4, "mfu": None}

    plot = tmp_path / "out" / "val.png"
    code, out, err = run_main("runs", tmp_path / "a", tmp_path / "b", running, "--plot", plot)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["run", "steps", "train", "loss", "val", "loss", "val", "acc/bpb", "units/s", "MFU",
                                "wall", "stopped", "by"]
    assert lines[2].split()[:4] == ["a", "40", f"{a['train_loss']:.4f}", f"{a['val_loss']:.4f}"]
    assert f"{100 * a['val_accuracy']:.2f} %" in lines[2] and "samples/s" in lines[2]
    assert lines[4].split()[:4] == ["c", "10", "1.5000", "1.4000"] and lines[4].endswith("(running)")
    assert lines[-1] == f"validation curves: {plot}"
    assert plot.read_bytes()[:8] == PNG


def test_a_folder_that_is_not_a_run_is_one_error_line_and_nothing_is_written(tmp_path, fast, run_main):
    _train(fast, tmp_path / "a")
    plot = tmp_path / "val.png"
    code, out, err = run_main("runs", tmp_path / "a", tmp_path / "missing", "--plot", plot)
    assert (code, out) == (2, "") and err == f"error: runs: {tmp_path / 'missing'} is not a directory (give a run folder)\n"
    assert not plot.exists()
    (tmp_path / "a" / "summary.json").write_text('{"mfu": "fast"}')
    code, _, err = run_main("runs", tmp_path / "a")
    assert code == 2 and err.count("\n") == 1 and "'mfu' must be a number" in err
    code, _, err = run_main("runs", tmp_path / "a", "--plot", tmp_path)
    assert code == 2 and err == f"error: --plot: {tmp_path} is a folder, not a file\n"
