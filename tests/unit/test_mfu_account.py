"""benchmarks/mfu_account.py: the step account adds up, and the GEMM list is what autograd runs."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import mfu_account as acc  # noqa: E402

from scaletrain.models.gpt.model import GPT, GPTArgs  # noqa: E402


def _ev(name, ts, dur, cat="cpu_op"):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": 1, "pid": 1}


def test_step_account_counts_self_time_once_and_adds_up():
    events = [
        _ev("data", 0, 10, "user_annotation"),
        _ev("forward", 10, 100, "user_annotation"),
        _ev("aten::linear", 15, 50), _ev("aten::mm", 20, 40),  # linear's own 10 us is dispatch
        _ev("aten::gelu", 70, 20),
        _ev("backward", 115, 60, "user_annotation"),  # 5 us gap before it: the loop's Python
        _ev("aten::mm", 120, 30), _ev("aten::mul", 150, 10),
        _ev("optimizer", 175, 25, "user_annotation"),
        _ev("aten::_fused_adamw_", 180, 15),
    ]
    a = acc.step_account(events, steps=1)
    s = {k: v * 1e6 for k, v in a["seconds_per_step"].items()}
    assert s["matmul"] == pytest.approx(70)
    assert s["dispatch"] == pytest.approx(10)
    assert s["activation"] == pytest.approx(20)
    assert s["elementwise"] == pytest.approx(10)
    assert s["optimizer"] == pytest.approx(25)  # everything in the range, its Python included
    assert s["data"] == pytest.approx(10)
    # forward: 100 - 50 - 20 = 30; backward: 60 - 40 = 20; the gap between ranges: 5
    assert s["python"] == pytest.approx(55)
    assert a["wall_seconds_per_step"] * 1e6 == pytest.approx(200)
    assert a["sum_seconds_per_step"] == pytest.approx(a["wall_seconds_per_step"])


def test_model_gemms_are_the_mms_autograd_runs():
    args = GPTArgs(vocab_size=300, seq_len=16, n_layer=2, n_head=2, d_model=32, rope=True)
    batch = 3
    model = GPT(args)
    idx = torch.randint(0, args.vocab_size, (batch, args.seq_len))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        loss = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
        loss.backward()
    seen = acc.mm_shapes_per_step(prof.key_averages(group_by_input_shape=True), steps=1)
    gemms = acc.model_gemms(args, batch)
    expected: Counter = Counter()
    for g in gemms:
        expected[(tuple(g["a"]), tuple(g["b"]))] += g["count"]
    assert dict(seen) == dict(expected)
    # Their FLOPs are the matmul part of the model's own count (6 x matmul weights x tokens).
    tokens = batch * args.seq_len
    attention = 12 * args.n_layer * args.d_model * args.seq_len
    assert sum(g["flops"] * g["count"] for g in gemms) == pytest.approx(
        (model.flops_per_token() - attention) * tokens)


def _run(tps, mfu=None):
    return {"tokens_per_second": tps, "step_seconds": 1024 / tps, "model_flops_per_second": tps * 1e7,
            "mfu": mfu if mfu is not None else tps / 1e4, "pass": 1, "position": 0, "run_seconds": 1.0,
            "first_window_seconds": 1.0, "timed_steps": 40, "tokens_per_step": 1024}


def test_levers_pay_only_when_every_run_beats_every_preset_run():
    import mfu_report

    rows = {
        "preset": [_run(5000), _run(5100)],  # spread 100 / 5050 = 2 %
        "steady": [_run(5600), _run(5650)],  # every run above every preset run, median +11 %
        "one_lucky": [_run(7000), _run(5050)],  # median +19 %, but one run inside the preset's range
        "slow": [_run(3000), _run(3100)],
    }
    levers = {k: {"what": k, "same_model": True, **mfu_report.combine_runs(v)} for k, v in rows.items()}
    assert levers["one_lucky"]["tokens_per_second"] == pytest.approx(6025)  # median of two: their mean
    base_tps, _, spread = mfu_report.compare_levers(levers)
    assert base_tps == pytest.approx(5050)
    assert spread == pytest.approx(100 / 5050)
    assert levers["steady"]["verdict"] == "faster" and not levers["steady"]["noisy"]
    assert levers["one_lucky"]["verdict"] == "unclear" and levers["one_lucky"]["noisy"]
    assert levers["slow"]["verdict"] == "slower"
    assert levers["preset"]["verdict"] is None
    assert len(levers["steady"]["runs"]) == 2  # both runs kept for the JSON
