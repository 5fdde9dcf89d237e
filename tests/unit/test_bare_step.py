"""`bare_step`: the optimizer's step without torch.optim's wrapper, when that wrapper has nothing to
do; the same update as `optimizer.step()`, and the wrapper's work (hooks, the profiler range) still
done whenever there is some."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from scaletrain.train.step import bare_step


def _model_and_grads(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    grads = [[torch.randn_like(p) for p in model.parameters()] for _ in range(4)]
    return model, grads


def _train(model, optimizer, grads, step):
    for step_grads in grads:
        for p, g in zip(model.parameters(), step_grads):
            p.grad = g.clone()
        step()


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, fused=True),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, foreach=False),
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
], ids=["adamw-fused", "adamw-loop", "sgd-nesterov"])
def test_the_update_is_optimizer_step_s_bit_for_bit(make):
    model, grads = _model_and_grads()
    twin = copy.deepcopy(model)
    opt, twin_opt = make(model.parameters()), make(twin.parameters())
    _train(model, opt, grads, bare_step(opt))
    _train(twin, twin_opt, grads, twin_opt.step)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    for p, q in zip(model.parameters(), twin.parameters()):
        for key, value in opt.state[p].items():
            assert torch.equal(value, twin_opt.state[q][key]), key


def test_the_optimizer_s_own_step_function_runs_without_the_wrapper():
    model, grads = _model_and_grads()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    wrapper_ran = []
    opt._optimizer_step_code = lambda: wrapper_ran.append(True)  # torch.optim's wrapper calls it
    step = bare_step(opt)
    _train(model, opt, grads[:1], step)
    assert not wrapper_ran and int(opt.state[next(model.parameters())]["step"]) == 1
    opt.step()  # the plain call still goes through the wrapper
    assert wrapper_ran


def test_step_hooks_still_run_including_ones_registered_later():
    model, grads = _model_and_grads()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step = bare_step(opt)  # built before any hook exists
    calls = []
    handles = [opt.register_step_pre_hook(lambda o, a, k: calls.append("pre")),
               opt.register_step_post_hook(lambda o, a, k: calls.append("post")),
               register_optimizer_step_post_hook(lambda o, a, k: calls.append("global post"))]
    try:
        _train(model, opt, grads[:2], step)
    finally:
        for h in handles:
            h.remove()
    assert calls == ["pre", "post", "global post"] * 2


def test_a_profiler_still_sees_the_optimizer_s_range():
    model, grads = _model_and_grads()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step = bare_step(opt)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _train(model, opt, grads[:1], step)
    assert "Optimizer.step#AdamW.step" in {e.name for e in prof.events()}


def test_a_step_replaced_on_the_instance_or_a_foreign_optimizer_is_called_as_it_is():
    model, grads = _model_and_grads()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = []
    original = opt.step
    opt.step = lambda *a, **k: (calls.append(1), original(*a, **k))[1]  # as a scheduler's step counter does
    _train(model, opt, grads[:2], bare_step(opt))
    assert calls == [1, 1]

    class Foreign:  # not a torch.optim.Optimizer
        def __init__(self):
            self.steps = 0

        def step(self):
            self.steps += 1

    foreign = Foreign()
    bare_step(foreign)()
    assert foreign.steps == 1
