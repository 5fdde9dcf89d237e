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

from scaletrain.models.gpt import GPT, GPTArgs  # noqa: E402


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
    assert s["GELU"] == pytest.approx(20)
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
