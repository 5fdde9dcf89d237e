"""Our own optimizers against the papers' update rules, written out here independently (a plain
per-tensor loop in float64-free Python, no foreach), for 12 steps on a small problem; muon against
torch's Muon and AdamW run side by side; adamw8bit against torch's AdamW."""

from __future__ import annotations

import copy

import pytest
import torch

from scaletrain.models.mlp.model import MLP, MLPArgs
from scaletrain.optim import build_optimizer
from scaletrain.optim.param_groups import param_groups
from scaletrain.optim.muon import MuonAdamW

STEPS = 12


def _model() -> MLP:
    torch.manual_seed(0)
    return MLP(MLPArgs(input_dim=12, num_classes=5, hidden=(16, 8)))


def _grads(model: MLP, step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    x, y = torch.randn(32, 12, generator=g), torch.randint(0, 5, (32,), generator=g)
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()


def _train_ours(name: str, lr: float, wd: float, options=None) -> tuple[MLP, list[dict]]:
    model = _model()
    opt = build_optimizer(name, param_groups(model, wd), lr=lr, weight_decay=wd, betas=(0.9, 0.99),
                          eps=1e-6, momentum=0.9, options=options)
    for s in range(STEPS):
        _grads(model, s)
        opt.step()
    return model, opt


def _train_reference(update, lr: float, wd: float) -> MLP:
    """`update(p, grad, state, lr, wd, t)` per tensor, with wd = 0 for the no-decay group as in
    param_groups (biases)."""
    model = _model()
    decay = {id(p) for g in param_groups(model, wd) if g["weight_decay"] for p in g["params"]}
    states = {id(p): {} for p in model.parameters()}
    for s in range(STEPS):
        _grads(model, s)
        with torch.no_grad():
            for p in model.parameters():
                update(p, p.grad.clone(), states[id(p)], lr, wd if id(p) in decay else 0.0, s + 1)
    return model


def _assert_close(a: MLP, b: MLP, rtol=1e-5, atol=1e-7):
    moved = 0
    for (name, pa), pb, p0 in zip(a.named_parameters(), b.parameters(), _model().parameters()):
        torch.testing.assert_close(pa, pb, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
        moved += not torch.equal(pa, p0)
    assert moved == len(list(a.parameters()))  # every tensor trained


# ---- LAMB (You et al. 2019, Algorithm 2) ------------------------------------------------------

def lamb_update(p, g, st, lr, wd, t, b1=0.9, b2=0.99, eps=1e-6):
    m = st["m"] = b1 * st.get("m", torch.zeros_like(p)) + (1 - b1) * g
    v = st["v"] = b2 * st.get("v", torch.zeros_like(p)) + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
    r = m_hat / (v_hat.sqrt() + eps) + wd * p
    w_norm, r_norm = p.norm().item(), r.norm().item()
    trust = w_norm / r_norm if w_norm > 0 and r_norm > 0 else 1.0
    p -= lr * trust * r


def test_lamb_follows_the_paper():
    ours, _ = _train_ours("lamb", lr=0.02, wd=0.1)
    _assert_close(ours, _train_reference(lamb_update, lr=0.02, wd=0.1))


# ---- LARS (You, Gitman & Ginsburg 2017, Algorithm 1) ------------------------------------------

def lars_update(p, g, st, lr, wd, t, momentum=0.9, eta=0.001):
    if p.ndim >= 2:  # adapted layers; the no-decay ones (biases) take plain momentum steps
        w_norm, g_norm = p.norm().item(), g.norm().item()
        local = eta * w_norm / (g_norm + wd * w_norm) if w_norm > 0 and g_norm > 0 else 1.0
    else:
        local = 1.0
    v = st["v"] = momentum * st.get("v", torch.zeros_like(p)) + lr * local * (g + wd * p)
    p -= v


@pytest.mark.parametrize("wd", [1e-3, 0.0])  # without decay the matrices are still adapted
def test_lars_follows_the_paper(wd):
    ours, _ = _train_ours("lars", lr=2.0, wd=wd)
    _assert_close(ours, _train_reference(lars_update, lr=2.0, wd=wd))


# ---- Lion (Chen et al. 2023, Algorithm 2; betas (0.9, 0.99)) -----------------------------------

def lion_update(p, g, st, lr, wd, t, b1=0.9, b2=0.99):
    m = st.get("m", torch.zeros_like(p))
    c = b1 * m + (1 - b1) * g
    p -= lr * (torch.sign(c) + wd * p)
    st["m"] = b2 * m + (1 - b2) * g


def test_lion_follows_the_paper():
    ours, _ = _train_ours("lion", lr=1e-3, wd=0.5)
    # Every coordinate moves by exactly lr * sign(.) per step: a sign flip from rounding would show
    # as an error of 2 lr, far above this tolerance.
    _assert_close(ours, _train_reference(lion_update, lr=1e-3, wd=0.5), rtol=1e-5, atol=1e-6)


# ---- muon: torch's Muon on hidden matrices + AdamW on the rest, as one optimizer ---------------

def test_muon_equals_torch_muon_beside_adamw():
    ours, opt = _train_ours("muon", lr=0.01, wd=0.1)
    assert isinstance(opt, MuonAdamW)
    model = _model()
    # Matrices other than embeddings and the output head: net.0 (12 -> 16) and net.2 (16 -> 8).
    hidden = [model.net[0].weight, model.net[2].weight]
    hidden_ids = {id(p) for p in hidden}
    groups = param_groups(model, 0.1)
    muon = torch.optim.Muon(hidden, lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW(
        [{"params": [p for p in g["params"] if id(p) not in hidden_ids], "weight_decay": g["weight_decay"]}
         for g in groups], lr=0.01, betas=(0.9, 0.99), eps=1e-6, fused=True)
    for s in range(STEPS):
        _grads(model, s)
        muon.step()
        adamw.step()
    for pa, pb in zip(ours.parameters(), model.parameters()):
        assert torch.equal(pa, pb)
    kinds = {id(p): g["optimizer"] for g in opt.param_groups for p in g["params"]}
    assert kinds == {id(p): "muon" if n in ("net.0.weight", "net.2.weight") else "adamw"
                     for n, p in ours.named_parameters()}


def test_muon_state_dict_round_trip_continues_exactly():
    a, opt_a = _train_ours("muon", lr=0.01, wd=0.1)
    b = copy.deepcopy(a)
    opt_b = build_optimizer("muon", param_groups(b, 0.1), lr=0.01, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-6)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for g in opt_b.param_groups:  # schedules write lr through the outer groups: the inner ones see it
        g["lr"] *= 0.5
    for g in opt_a.param_groups:
        g["lr"] *= 0.5
    for model, opt in ((a, opt_a), (b, opt_b)):
        for s in range(STEPS, STEPS + 3):
            _grads(model, s)
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


# ---- adamw8bit: bitsandbytes' 8-bit AdamW tracks torch's AdamW -------------------------------

def test_adamw8bit_tracks_adamw():
    from scaletrain.optim.registry import AdamW8bitOptions

    ours, opt = _train_ours("adamw8bit", lr=1e-3, wd=0.1, options=AdamW8bitOptions(min_8bit_size=0))
    ref, _ = _train_ours("adamw", lr=1e-3, wd=0.1)
    start = _model()
    err = moved = 0.0
    for (name, p8), p32, p0 in zip(ours.named_parameters(), ref.parameters(), start.parameters()):
        # Per tensor, the quantized moments cost at most ~10% of the distance travelled (the worst
        # is an 8-element bias whose tiny second moments sit in the coarse end of the map) ...
        assert (p8 - p32).norm() < 0.15 * (p32 - p0).norm(), name
        err += float((p8 - p32).norm() ** 2)
        moved += float((p32 - p0).norm() ** 2)
    assert err ** 0.5 < 0.03 * moved ** 0.5  # ... and ~1% over the whole model
    assert any(s["state1"].dtype == torch.uint8 for s in opt.state.values())
