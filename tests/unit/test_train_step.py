"""The one train step (train/step.py) against a hand-written step, and its parts: the micro-batch
positions, the guard's veto, the phases, and the fault hooks installed around it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scaletrain.models.mlp.model import MLP, MLPArgs
from scaletrain.parallel import faults
from scaletrain.parallel.config import ParallelConfig
from scaletrain.parallel.dist import DistInfo
from scaletrain.parallel.layout import build_layout
from scaletrain.train.step import micro_batches, plain_forward_backward, train_step


def test_micro_batches_split_one_global_batch_whatever_the_ranks():
    # 2 ranks x 3 micro-batches of 4: rank r's k-th micro-batch is at k*8 + r*4 of the step
    assert micro_batches(100, 4, 3, 2, 1) == [(104, 4), (112, 4), (120, 4)]
    one = sorted(p for p, _ in micro_batches(0, 4, 3, 1, 0) + micro_batches(12, 4, 3, 1, 0))
    two = sorted(p for r in (0, 1) for p, _ in micro_batches(0, 4, 3, 2, r))
    assert one == two  # the same 24 samples, split differently
    # full-batch gd: every sample exactly once; the last chunk is short, a rank past the end gets 0
    chunks = [micro_batches(0, 4, 1, 2, r, samples=10) for r in (0, 1)]
    assert chunks[0] == [(0, 4), (8, 2)] and chunks[1] == [(4, 4), (12, 0)]
    covered = [p + i for plan in chunks for p, n in plan for i in range(n)]
    assert sorted(covered) == list(range(10))


def _mlp_and_batches(seed=0):
    torch.manual_seed(seed)
    model = MLP(MLPArgs(input_dim=6, num_classes=3, hidden=(5,)))
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    return model, x, y


def _step(model, batches, *, guard=None, phase=None, clip=0.0):
    layout = build_layout(model, None, ParallelConfig(), DistInfo(), precision="fp32", compile=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    kwargs = {"phase": phase} if phase is not None else {}
    fb = plain_forward_backward(layout.module, F.cross_entropy, device=torch.device("cpu"),
                                autocast=layout.autocast, grad_sync=layout.grad_sync, **kwargs)
    return train_step(fb, batches, optimizer, layout, params=list(model.parameters()), grad_clip=clip,
                      want_norm=False, guard=guard, **kwargs), optimizer


def test_accumulated_step_equals_one_full_batch_step_by_hand():
    model, x, y = _mlp_and_batches()
    reference, _, _ = _mlp_and_batches()
    (loss, norm, reason), _ = _step(model, [(x[:4], y[:4]), (x[4:], y[4:])], clip=1.0)
    # by hand: the mean loss of the whole batch, its gradient clipped to norm 1, one SGD step
    full = F.cross_entropy(reference(x), y)
    full.backward()
    grads = [p.grad for p in reference.parameters()]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    with torch.no_grad():
        for p, g in zip(reference.parameters(), grads):
            p -= 0.5 * g * min(1.0, 1.0 / (float(total) + 1e-6))
    assert reason is None
    assert float(loss) == pytest.approx(full.item(), rel=1e-6)
    assert float(norm) == pytest.approx(float(total), rel=1e-5)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert a.grad is None  # zero_grad(set_to_none) after the update


def test_a_guard_verdict_drops_the_update_and_the_gradients():
    model, x, y = _mlp_and_batches()
    before = [p.detach().clone() for p in model.parameters()]
    seen = []

    def guard(loss, norm, nonfinite):
        seen.append((loss, norm, nonfinite))
        return "planted"

    (loss, norm, reason), _ = _step(model, [(x, y)], guard=guard)
    assert reason == "planted"
    # no norm was wanted (no clipping, not a logging step): the guard got the cheap non-finite flag
    assert seen[0][1] is None and float(seen[0][2]) == 0.0
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b) and p.grad is None


def test_phases_bracket_each_micro_batch_and_the_update():
    model, x, y = _mlp_and_batches()
    order = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            order.append(self.name)

        def __exit__(self, *exc):
            order.append("/" + self.name)

    _step(model, [(x[:4], y[:4]), (x[4:], y[4:])], phase=Recorder)
    assert order == ["forward", "/forward", "backward", "/backward"] * 2 + ["optimizer", "/optimizer"]


def test_planted_loss_fault_hits_every_micro_batch_of_its_step_once(monkeypatch):
    monkeypatch.setenv("SCALETRAIN_FAULT", "spike:step=2:factor=10")
    monkeypatch.setattr(faults, "_fired", set())
    current = {"step": 0}
    injector = faults.Injector(rank=0, next_step=lambda: current["step"] + 1)
    loss = injector.loss(lambda logits, y: logits.sum())
    factors = []

    def step():
        factors.append([float(loss(torch.ones(1), None)) for _ in range(3)])  # 3 micro-batches

    wrapped = injector.step(step)
    for current["step"] in range(3):
        wrapped()
    current["step"] = 1  # a rollback reaches step 2 again: the transient fault has fired already
    wrapped()
    assert factors == [[1.0] * 3, [10.0] * 3, [1.0] * 3, [1.0] * 3]
    monkeypatch.setenv("SCALETRAIN_FAULT", "nan:step=1")
    monkeypatch.setattr(faults, "_fired", set())
    current["step"] = 0
    wrapped()
    assert all(math.isnan(f) for f in factors[-1])


def test_the_guard_reads_only_the_flag_without_a_spike_check():
    from scaletrain.config.schema import GuardConfig
    from scaletrain.train.guard import Guard

    guard = Guard(GuardConfig(), distributed=False)
    nan = torch.tensor(float("nan"))
    # The flag covers the loss (it is in the fused check): with the flag clear the loss is not read.
    assert guard.verdict(nan, None, torch.zeros(1)) is None
    assert guard.verdict(torch.tensor(2.0), None, torch.ones(1)) == "a gradient is NaN or Inf"
    assert guard.verdict(nan, None, torch.ones(1)) == "loss is nan"
    assert guard.verdict(torch.tensor(2.0), torch.tensor(float("inf")), None) == "gradient norm is inf"
    guard.good()
    assert guard.recent_mean is None  # no spike check: no mean kept


def test_the_guard_s_spike_check_reads_every_loss_and_keeps_their_mean():
    from scaletrain.config.schema import GuardConfig
    from scaletrain.train.guard import Guard

    guard = Guard(GuardConfig(spike_factor=3.0), distributed=False)
    for loss in (2.0, 2.0, 2.0, 2.0, 2.0):
        assert guard.verdict(torch.tensor(loss), None, torch.zeros(1)) is None
        guard.good()
    assert guard.recent_mean == pytest.approx(2.0)
    assert guard.verdict(torch.tensor(7.0), None, torch.zeros(1)).startswith("loss spiked to 7")
    assert guard.verdict(torch.tensor(5.0), None, torch.zeros(1)) is None
    guard.good()
    assert guard.recent_mean == pytest.approx(0.9 * 2.0 + 0.1 * 5.0)
