import math

import pytest
import torch

from scaletrain.errors import UserError
from scaletrain.optim import (SCHEDULES, apply_lr, build_optimizer, constant, cosine, inverse_sqrt,
                              linear, lr_multiplier, scale_lr, wsd)


def test_constant():
    assert [constant(s, warmup=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert constant(0) == 1.0


def test_cosine_known_values():
    kw = dict(total=110, warmup=10, min_ratio=0.1)
    assert cosine(0, **kw) == pytest.approx(0.1)
    assert cosine(9, **kw) == pytest.approx(1.0)
    assert cosine(10, **kw) == pytest.approx(1.0)
    assert cosine(60, **kw) == pytest.approx(0.55)  # midpoint: (1 + min) / 2
    assert cosine(110, **kw) == pytest.approx(0.1)
    assert cosine(500, **kw) == pytest.approx(0.1)  # clamped after total
    vals = [cosine(s, **kw) for s in range(10, 120)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    warm = [cosine(s, **kw) for s in range(10)]
    assert all(a < b for a, b in zip(warm, warm[1:]))


def test_linear_known_values():
    kw = dict(total=100, warmup=0, min_ratio=0.0)
    assert linear(0, **kw) == 1.0
    assert linear(50, **kw) == pytest.approx(0.5)
    assert linear(100, **kw) == 0.0 and linear(150, **kw) == 0.0
    assert linear(100, total=100, min_ratio=0.2) == pytest.approx(0.2)


def test_wsd_stable_and_linear_cooldown():
    kw = dict(total=100, warmup=10, decay_fraction=0.2)
    assert wsd(4, **kw) == pytest.approx(0.5)
    assert all(wsd(s, **kw) == 1.0 for s in range(9, 80))
    assert wsd(90, **kw) == pytest.approx(0.5)
    assert wsd(100, **kw) == 0.0 and wsd(120, **kw) == 0.0
    assert wsd(100, min_ratio=0.1, **kw) == pytest.approx(0.1)


def test_wsd_1_sqrt_shape():
    kw = dict(total=100, warmup=0, decay_fraction=0.2, cooldown="1-sqrt")
    assert wsd(85, **kw) == pytest.approx(1 - math.sqrt(0.25))
    assert wsd(90, min_ratio=0.2, **kw) == pytest.approx(0.2 + 0.8 * (1 - math.sqrt(0.5)))
    vals = [wsd(s, **kw) for s in range(80, 101)]
    assert all(a > b for a, b in zip(vals, vals[1:]))
    # 1-sqrt drops faster than linear at the start of the cooldown (concave in progress).
    assert wsd(85, **kw) < wsd(85, total=100, decay_fraction=0.2)
    with pytest.raises(UserError, match="cooldown"):
        wsd(0, total=10, cooldown="cubic")


def test_inverse_sqrt():
    assert inverse_sqrt(3, warmup=4) == pytest.approx(1.0)
    assert inverse_sqrt(15, warmup=4) == pytest.approx(0.5)
    vals = [inverse_sqrt(s, warmup=4) for s in range(3, 50)]
    assert all(a > b for a, b in zip(vals, vals[1:]))
    assert inverse_sqrt(3, warmup=0) == pytest.approx(0.5)


def test_dispatcher():
    args = dict(total=100, warmup=10, min_ratio=0.1, decay_fraction=0.2, cooldown="linear")
    assert set(SCHEDULES) == {"constant", "cosine", "linear", "wsd", "inverse_sqrt"}
    assert lr_multiplier("cosine", 55, **args) == cosine(55, total=100, warmup=10, min_ratio=0.1)
    assert lr_multiplier("wsd", 95, **args) == wsd(95, total=100, warmup=10, decay_fraction=0.2, min_ratio=0.1)
    assert lr_multiplier("constant", 3, **args) == pytest.approx(0.4)
    assert lr_multiplier("inverse_sqrt", 39, **args) == pytest.approx(0.5)
    with pytest.raises(UserError, match="step_decay"):
        lr_multiplier("step_decay", 0, **args)
    with pytest.raises(UserError, match="min_ratio"):
        lr_multiplier("cosine", 0, **{**args, "min_ratio": 2.0})


def test_scale_lr():
    assert scale_lr(0.1, 256, 1024, "linear") == pytest.approx(0.4)
    assert scale_lr(0.1, 256, 1024, "sqrt") == pytest.approx(0.2)
    assert scale_lr(0.1, 256, 1024, "none") == 0.1
    with pytest.raises(UserError, match="cube"):
        scale_lr(0.1, 256, 1024, "cube")
    with pytest.raises(UserError, match="base_batch"):
        scale_lr(0.1, 0, 1024, "linear")


def test_apply_lr():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer("sgd", [{"params": [a]}, {"params": [b], "lr_mult": 0.5}], lr=0.2, weight_decay=0)
    apply_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.05])
    apply_lr(opt, 1.0)  # from base_lr, not compounding
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2, 0.1])
