"""doctor's checks on run folders written record by record: each threshold on both of its sides."""

from __future__ import annotations

import json
import math

import pytest

from scaletrain.diagnose import doctor
from scaletrain.errors import UserError


def write_run(path, train, val=(), summary=None, config=None):
    path.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"split": "train", **r}) for r in train] + [json.dumps({"split": "val", **r}) for r in val]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    cfg = config or {"model": {"name": "gpt"}, "data": {"vocab_size": 512}, "optim": {"lr": 3e-3},
                     "train": {"grad_clip": 1.0}}
    import yaml

    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return doctor.load_run(path)


def falling(n=10, start=6.0, step=0.2, every=5, **extra):
    return [{"step": every * (i + 1), "loss": start - step * i, "grad_norm": 1.0, **extra} for i in range(n)]


def kinds(findings, severities=("warning", "error")):
    return sorted(f.kind for f in findings if f.severity in severities)


def test_healthy_run_has_no_findings(tmp_path):
    run = write_run(tmp_path, falling(), val=[{"step": 25, "val_loss": 5.3}, {"step": 50, "val_loss": 4.4}],
                    summary={"mfu": 0.4, "peak_memory_bytes": 10**8, "tokens_per_second": 1e4})
    assert doctor.diagnose(run) == []


def test_overfitting_needs_a_rise_after_the_best_while_training_improves(tmp_path):
    train = falling(20)
    val = [{"step": 10, "val_loss": 5.5}, {"step": 20, "val_loss": 5.0}, {"step": 30, "val_loss": 5.06},
           {"step": 40, "val_loss": 5.2}]
    (f,) = [f for f in doctor.diagnose(write_run(tmp_path / "a", train, val)) if f.kind == "overfitting"]
    assert f.data["best_step"] == 20 and f.data["last_val_loss"] == 5.2
    assert f.data["train_loss_at_best"] == pytest.approx(5.4) and f.data["train_loss_at_last"] == pytest.approx(4.6)
    # +1 % above the best is within noise (threshold 2 %)
    val[-1]["val_loss"] = 5.05
    assert "overfitting" not in kinds(doctor.diagnose(write_run(tmp_path / "b", train, val)))


def test_divergence_above_uniform_guess_and_after_the_best(tmp_path):
    up = [{"step": 5 * (i + 1), "loss": v, "grad_norm": 1.0} for i, v in enumerate([6.0, 5.0, 4.5, 4.4, 5.3, 6.5])]
    found = doctor.diagnose(write_run(tmp_path / "a", up))
    (f,) = [f for f in found if f.kind == "divergence"]
    assert f.severity == "error" and f.data["best_step"] == 20 and f.data["last_loss"] == 6.5
    assert "lr_too_high" in kinds(found)
    blown = [{"step": 5 * (i + 1), "loss": v, "grad_norm": 5.0} for i, v in enumerate([13.0, 11.0, 8.0, 6.0, 5.8])]
    (f,) = [f for f in doctor.diagnose(write_run(tmp_path / "b", blown)) if f.kind == "divergence"]
    assert f.severity == "warning" and f.data["steps"] == [5, 10, 15]  # 1.25 x ln 512 = 7.80
    assert f.data["uniform_loss"] == pytest.approx(math.log(512))


def test_nan_logged_is_an_error_and_skipped_steps_a_warning(tmp_path):
    train = falling(5)
    train[3]["loss"] = float("nan")
    (f,) = [f for f in doctor.diagnose(write_run(tmp_path / "a", train)) if f.kind == "nan"]
    assert f.severity == "error" and f.data["steps"] == [20]
    survived = falling(5)
    survived[2]["skipped_steps"] = 1
    survived[3]["skipped_steps"] = 1
    (f,) = [f for f in doctor.diagnose(write_run(tmp_path / "b", survived)) if f.kind == "nan"]
    assert f.severity == "warning" and f.data["skipped_steps"] == 1


def test_grad_explosion_is_ten_times_the_running_median(tmp_path):
    train = falling(8)
    train[6]["grad_norm"] = 12.0
    (f,) = [f for f in doctor.diagnose(write_run(tmp_path / "a", train)) if f.kind == "grad_explosion"]
    assert f.data["steps"] == [35] and f.data["largest"] == 12.0
    train[6]["grad_norm"] = 9.0
    assert "grad_explosion" not in kinds(doctor.diagnose(write_run(tmp_path / "b", train)))


def test_lr_too_low_when_the_loss_barely_moves(tmp_path):
    flat = falling(8, start=6.0, step=0.01)  # 1.2 % over 35 steps
    (f,) = [f for f in doctor.diagnose(write_run(tmp_path / "a", flat)) if f.kind == "lr_too_low"]
    assert f.data["lr"] == 3e-3 and "optim.lr=0.009" in f.remedy
    moving = falling(8, start=6.0, step=0.05)  # 5.8 %
    assert doctor.diagnose(write_run(tmp_path / "b", moving)) == []


def test_data_bound_ignores_the_first_window(tmp_path):
    train = falling(4)
    for r, w in zip(train, [0.9, 0.1, 0.15, 0.12]):
        r["data_wait_fraction"] = w
    assert "data_bound" not in kinds(doctor.diagnose(write_run(tmp_path / "a", train)))
    for r in train[1:]:
        r["data_wait_fraction"] = 0.3
    (f,) = [f for f in doctor.diagnose(write_run(tmp_path / "b", train)) if f.kind == "data_bound"]
    assert f.severity == "warning" and f.data["mean_fraction"] == pytest.approx(0.3)


def test_stragglers_flagged_and_imbalance(tmp_path):
    train = falling(4)
    for r in train:
        r["rank_step_seconds"], r["stragglers"] = [0.1, 0.3], [1]
    (f,) = [f for f in doctor.diagnose(write_run(tmp_path / "a", train)) if f.kind == "straggler"]
    assert f.severity == "warning" and f.data["ranks"] == [1] and f.data["ratio"] == pytest.approx(3.0)
    for r in train:
        r["rank_step_seconds"], r["stragglers"] = [0.1, 0.13], []
    (f,) = [f for f in doctor.diagnose(write_run(tmp_path / "b", train)) if f.kind == "straggler"]
    assert f.severity == "info" and f.data["ratio"] == pytest.approx(1.3)


def test_memory_pressure_against_a_given_limit(tmp_path):
    run = write_run(tmp_path, falling(), summary={"peak_memory_bytes": 9 * 10**8, "mfu": 0.4})
    (f,) = [f for f in doctor.diagnose(run, device_memory_bytes=10**9) if f.kind == "memory_pressure"]
    assert f.severity == "warning" and f.data["fraction"] == pytest.approx(0.9)
    assert doctor.diagnose(run, device_memory_bytes=2 * 10**9) == []
    (f,) = doctor.diagnose(run, device_memory_bytes=9 * 10**8)
    assert f.severity == "error"


def test_low_mfu_levels(tmp_path):
    run = write_run(tmp_path / "a", falling(), summary={"mfu": 0.03, "matmul_peak_flops": 1e11,
                                                        "tokens_per_second": 100.0})
    (f,) = doctor.diagnose(run)
    assert (f.kind, f.severity) == ("low_mfu", "warning")
    run = write_run(tmp_path / "b", falling(), summary={"mfu": 0.15})
    assert [(f.kind, f.severity) for f in doctor.diagnose(run)] == [("low_mfu", "info")]


def test_not_a_run_folder(tmp_path, run_main):
    with pytest.raises(UserError, match="metrics.jsonl"):
        doctor.load_run(tmp_path)
    code, _, err = run_main("doctor", tmp_path / "missing")
    assert code == 2 and err.startswith("error: doctor:") and "Traceback" not in err


def test_damaged_metrics_lines_are_a_finding_not_a_crash(tmp_path):
    """A cut last line is what a crash leaves (info); junk in the middle is reported as a warning and
    the readable records are still diagnosed."""
    run = write_run(tmp_path, falling())
    with open(tmp_path / "metrics.jsonl", "ab") as fh:
        fh.write(b'{"step": 60, "split": "tr')
    found = [f for f in doctor.diagnose(doctor.load_run(tmp_path)) if f.kind == "damaged_log"]
    assert [(f.severity, f.data["lines"]) for f in found] == [("info", [11])]
    assert len(run.train) == 10
    (tmp_path / "metrics.jsonl").write_bytes((tmp_path / "metrics.jsonl").read_bytes().replace(
        b'{"step": 60, "split": "tr', b'\xff\xfe\n[[[[\n{"step": "x"}\n{"step": 70, "split": "train", "loss": "low"}\n'
        b'{"step": 80, "split": "train", "rank_busy_seconds": ["a"]}\n{"step": 90, "stragglers": [0.5]}\n'
        + b"[" * 100_000 + b"\n"))
    run = doctor.load_run(tmp_path)
    found = [f for f in doctor.diagnose(run) if f.kind == "damaged_log"]
    assert len(found) == 1 and found[0].severity == "warning" and found[0].data["lines"] == list(range(11, 18))
    assert len(run.train) == 10 and "line 11: not UTF-8" in found[0].evidence


@pytest.mark.parametrize("name,content,expected", [
    ("summary.json", b'{"mfu": "fast"}', "'mfu' must be a number"),
    ("summary.json", b'{"skipped_steps": [1]}', "'skipped_steps' must be a number"),
    ("summary.json", b"[1, 2]", "a list where a run's summary"),
    ("summary.json", b"[" * 50_000, "nested deeper"),
    ("summary.json", b"\xff\xfe{}", "not UTF-8"),
    ("summary.json", b'{"mfu": 0.1', "not valid JSON"),
    ("config.yaml", b"optim: [1, 2\n", "not valid YAML"),
    ("config.yaml", b"- a\n- b\n", "not a mapping of config sections"),
    ("config.yaml", b"a: " + b"[" * 30_000, "config.yaml"),
    ("config.yaml", b"\x00\xff binary", "config.yaml"),
])
def test_hostile_run_files_are_one_error_line(tmp_path, run_main, name, content, expected):
    write_run(tmp_path, falling(), summary={"mfu": 0.4})
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=expected):
        doctor.load_run(tmp_path)
    code, out, err = run_main("doctor", str(tmp_path), "--json")
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: ") and name in err


def test_config_values_that_are_not_scalars_read_as_unknown(tmp_path):
    """A planted alias bomb where optim.lr belongs is never printed (or expanded) by a finding."""
    bomb = "optim:\n  lr: &a [" + ", ".join(["x"] * 9) + "]\n  other: [*a, *a, *a]\nparallel: {nproc: [1]}\n"
    write_run(tmp_path, [{"step": 5 * (i + 1), "loss": 5.0, "grad_norm": 1.0} for i in range(10)],
              summary={"peak_memory_bytes": 10**8})
    (tmp_path / "config.yaml").write_text(bomb)
    run = doctor.load_run(tmp_path)
    assert doctor._cfg(run, "optim", "lr") is None and doctor._cfg(run, "parallel", "nproc", 1) == 1
    low = [f for f in doctor.diagnose(run) if f.kind == "lr_too_low"]
    assert low and "optim.lr=None" in low[0].evidence


def converged_classifier():
    """The shape of mlp-digits' curve before this fix: 1.945 falling to a best of 0.0030 at step 780
    and ending at 0.0042, up in 15 of 49 windows (noise around a converged loss)."""
    losses = [1.945 * 0.8 ** i for i in range(20)]  # 1.945 -> 0.0281
    tail = [0.004, 0.0035, 0.0045, 0.0032, 0.0041, 0.0036, 0.0044, 0.0031, 0.0043, 0.0034] * 3
    tail[18] = 0.0030  # the best, at step 780
    return [{"step": 20 * (i + 1), "loss": v, "grad_norm": 0.1} for i, v in enumerate(losses + tail[:29] + [0.0042])]


def test_a_converged_run_ending_a_hair_above_its_best_is_healthy(tmp_path):
    train = converged_classifier()
    assert train[-1]["loss"] == 0.0042 and min(r["loss"] for r in train) == 0.0030
    found = doctor.diagnose(write_run(tmp_path, train, config={"data": {"kind": "images"}, "optim": {"lr": 2e-3},
                                                                 "train": {"grad_clip": 0.0}}))
    assert kinds(found) == []


def test_divergence_is_giving_back_half_the_progress(tmp_path):
    base = [6.0, 5.0, 4.0, 3.5, 3.0, 3.0]
    for end, expected in ((4.4, "warning"), (4.6, "warning"), (6.2, "error")):
        train = [{"step": 5 * (i + 1), "loss": v, "grad_norm": 1.0} for i, v in enumerate(base + [3.6, 4.0, end])]
        found = doctor.diagnose(write_run(tmp_path / str(end), train))
        div = [f for f in found if f.kind == "divergence" and "spike" not in f.summary]
        if end < 4.5:  # gave back 1.4 of the 3.0 learned: under half
            assert not div
        else:
            assert [f.severity for f in div] == [expected] and "lr_too_high" in kinds(found)


def test_spikes_count_against_the_progress_made(tmp_path):
    # A 1.5x jump of a loss that has learned almost everything is noise ...
    tiny = [{"step": 5 * (i + 1), "loss": v, "grad_norm": 1.0}
            for i, v in enumerate([2.0, 1.0, 0.1, 0.01, 0.002, 0.002, 0.003, 0.002, 0.002])]
    assert doctor.diagnose(write_run(tmp_path / "a", tiny, config={"data": {"kind": "images"}})) == []
    # ... a 1.5x jump of a language model's loss is not; two of them are evidence of a high lr.
    lm = [6.0, 5.0, 4.5, 4.0, 4.0, 6.0, 4.0, 3.9, 3.9, 5.9, 3.8, 3.8]
    found = doctor.diagnose(write_run(tmp_path / "b", [{"step": 5 * (i + 1), "loss": v, "grad_norm": 1.0}
                                                      for i, v in enumerate(lm)]))
    (spike,) = [f for f in found if f.kind == "divergence"]
    assert spike.data["spike_steps"] == [30, 50] and spike.severity == "warning"
    (high,) = [f for f in found if f.kind == "lr_too_high"]
    assert high.data["evidence"] == "2 loss spikes"
    one = lm[:8] + [3.8, 3.8, 3.7, 3.7]  # one spike: reported, but no lr verdict on one
    found = doctor.diagnose(write_run(tmp_path / "c", [{"step": 5 * (i + 1), "loss": v, "grad_norm": 1.0}
                                                      for i, v in enumerate(one)]))
    assert kinds(found) == ["divergence"]


def test_clipping_saturation_is_evidence_of_a_high_lr(tmp_path):
    train = falling(12)
    for r in train[6:]:
        r["grad_norm"] = 2.5  # above 2 x train.grad_clip (1.0) in every window of the second half
    (f,) = [f for f in doctor.diagnose(write_run(tmp_path / "a", train)) if f.kind == "lr_too_high"]
    assert f.data["evidence"].startswith("gradients clipped in 6 of the last 6 logged steps")
    train[-1]["grad_norm"] = 1.5  # 5 of 6: not saturated
    assert "lr_too_high" not in kinds(doctor.diagnose(write_run(tmp_path / "b", train)))


def test_oscillation_alone_is_not_a_high_lr(tmp_path):
    """Ups and downs while the loss still falls (a converged run's noise) are no evidence."""
    values = [6.0, 5.0, 5.2, 4.6, 4.8, 4.3, 4.5, 4.1, 4.2, 3.9]  # up in 4 of 9 windows (> 40 %)
    train = [{"step": 5 * (i + 1), "loss": v, "grad_norm": 1.0} for i, v in enumerate(values)]
    assert kinds(doctor.diagnose(write_run(tmp_path / "a", train))) == []
    stuck = [6.0, 5.8, 6.1, 5.7, 6.0, 5.6, 5.9, 5.6, 5.9, 5.7]  # up in 4 of 9, 5 % lower in all: stuck
    train = [{"step": 5 * (i + 1), "loss": v, "grad_norm": 1.0} for i, v in enumerate(stuck)]
    (f,) = [f for f in doctor.diagnose(write_run(tmp_path / "b", train)) if f.kind == "lr_too_high"]
    assert f.data["evidence"] == "it oscillates without getting lower"


def test_a_short_wait_per_step_is_not_data_bound(tmp_path):
    """30 % of a 1 ms step (a batch built in the loop) is 0.3 ms: not data-bound; of a 100 ms step it is."""
    train = falling(4)
    for r in train:
        r["data_wait_fraction"], r["samples_per_second"] = 0.3, 64_000.0  # 64 samples a step: 1 ms
    summary = {"global_batch_size": 64, "samples_per_second": 64_000.0, "mfu": 0.4}
    assert "data_bound" not in kinds(doctor.diagnose(write_run(tmp_path / "a", train, summary=summary)))
    for r in train:
        r["samples_per_second"] = 640.0
    assert "data_bound" in kinds(doctor.diagnose(write_run(tmp_path / "b", train, summary=summary)))


def test_low_mfu_of_a_step_too_small_for_the_device_is_information(tmp_path):
    summary = {"mfu": 0.02, "matmul_peak_flops": 1e11, "samples_per_second": 5e4, "flops_per_sample": 1e5,
               "global_batch_size": 64}  # 6.4 MFLOP a step: 0.064 ms at peak
    (f,) = doctor.diagnose(write_run(tmp_path / "a", falling(), summary=summary))
    assert (f.kind, f.severity) == ("low_mfu", "info") and f.data["step_seconds_at_peak"] == pytest.approx(6.4e-5)
    summary["flops_per_sample"] = 1e8  # 64 ms a step at peak: a real shortfall
    (f,) = doctor.diagnose(write_run(tmp_path / "b", falling(), summary=summary))
    assert (f.kind, f.severity) == ("low_mfu", "warning")


def test_overfitting_handled_by_early_stopping_is_information(tmp_path):
    train = falling(20)
    val = [{"step": 10, "val_loss": 5.5}, {"step": 20, "val_loss": 5.0}, {"step": 30, "val_loss": 5.06},
           {"step": 40, "val_loss": 5.2}, {"step": 40, "val_loss": 5.0}]  # the last: the restored step-20 weights
    summary = {"steps": 40, "exported_step": 20, "best_step": 20, "mfu": 0.4}
    (f,) = [f for f in doctor.diagnose(write_run(tmp_path / "a", train, val, summary)) if f.kind == "overfitting"]
    assert f.severity == "info" and f.data["last_val_loss"] == 5.2
    summary["exported_step"] = 40  # the last weights were exported: a warning
    (f,) = [f for f in doctor.diagnose(write_run(tmp_path / "b", train, val[:4], summary)) if f.kind == "overfitting"]
    assert f.severity == "warning"


def test_a_converged_models_gradient_back_at_its_starting_size_is_no_explosion(tmp_path):
    train = falling(10)
    for r, norm in zip(train, [1.0, 0.5, 0.1, 0.05, 0.02, 0.01, 0.01, 0.9, 0.01, 0.01]):
        r["grad_norm"] = norm  # 0.9 is 90x the median before it, but below the first norm
    assert "grad_explosion" not in kinds(doctor.diagnose(write_run(tmp_path / "a", train)))
    train[7]["grad_norm"] = 2.5
    assert "grad_explosion" in kinds(doctor.diagnose(write_run(tmp_path / "b", train)))
