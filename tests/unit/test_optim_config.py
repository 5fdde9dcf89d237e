"""Typed optimizer config (errors name the key), lr scaling for another global batch, parameter
roles, and the optimizer-state bytes per parameter that docs/optimizers.md states."""

from __future__ import annotations

import math

import pytest
import torch

from scaletrain.config.load import load_config
from scaletrain.config.schema import OptimConfig
from scaletrain.errors import UserError
from scaletrain.models.gpt.model import GPT, GPTArgs
from scaletrain.models.mlp.model import MLP, MLPArgs
from scaletrain.optim import build_optimizer, effective_lr, state_bytes_per_param
from scaletrain.optim.param_groups import param_groups


@pytest.mark.parametrize("override,key", [
    ("optim.lion.beta=0.9", "optim.lion.beta"),  # unknown key inside a section
    ("optim.muon.ns_steps=abc", "optim.muon.ns_steps"),  # wrong type
    ("optim.muon.adjust_lr_fn=other", "optim.muon.adjust_lr_fn"),
    ("optim.lars.trust_coefficient=0", "optim.lars.trust_coefficient"),
    ("optim.rmsprop.alpha=1.5", "optim.rmsprop.alpha"),
    ("optim.lr_scaling=cubic", "optim.lr_scaling"),
    ("optim.lr_scaling=sqrt", "optim.reference_batch"),  # scaling needs the tuned batch
    ("optim.adamw8bit.min_8bit_size=-1", "optim.adamw8bit.min_8bit_size"),
])
def test_bad_optimizer_settings_name_the_key(override, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        load_config("mlp-digits", [override])


def test_sections_reach_the_optimizer():
    cfg = load_config("mlp-digits", ["optim.name=lion", "optim.lion.betas=[0.8,0.9]",
                                     "optim.lars.trust_coefficient=0.01"])
    assert cfg.optim.lion.betas == [0.8, 0.9] and cfg.optim.lars.trust_coefficient == 0.01
    from scaletrain.optim import build_from_config

    torch.manual_seed(0)
    opt = build_from_config(MLP(MLPArgs(input_dim=4, num_classes=3, hidden=(8,))), cfg.optim)
    assert all(g["betas"] == (0.8, 0.9) for g in opt.param_groups)


@pytest.mark.parametrize("rule,batch,expected", [
    ("none", 512, 1e-3), ("linear", 512, 2e-3), ("linear", 64, 0.25e-3), ("sqrt", 1024, 2e-3),
    ("sqrt", 128, 1e-3 / math.sqrt(2)),
])
def test_effective_lr(rule, batch, expected):
    cfg = OptimConfig(lr=1e-3, lr_scaling=rule, reference_batch=256)
    assert effective_lr(cfg, batch) == pytest.approx(expected, rel=1e-12)


def test_roles():
    torch.manual_seed(0)
    untied = GPT(GPTArgs(vocab_size=37, seq_len=8, n_layer=1, n_head=2, d_model=16, tie_embeddings=False))
    roles = {n: r for g in param_groups(untied, 0.1) for n, r in zip(g["param_names"], g["param_roles"])}
    assert roles["tok_emb.weight"] == roles["pos_emb.weight"] == "embedding"
    assert roles["lm_head.weight"] == "output"
    assert roles["blocks.0.attn.qkv.weight"] == roles["blocks.0.mlp.proj.weight"] == "matrix"
    assert roles["norm_f.weight"] == "vector"
    tied = GPT(GPTArgs(vocab_size=37, seq_len=8, n_layer=1, n_head=2, d_model=16, tie_embeddings=True))
    roles = {n: r for g in param_groups(tied, 0.1) for n, r in zip(g["param_names"], g["param_roles"])}
    assert roles["tok_emb.weight"] == "embedding" and "lm_head.weight" not in roles  # the head is the embedding
    assert "output" not in roles.values()  # the tied head is the embedding: every block matrix is hidden
    assert roles["blocks.0.mlp.proj.weight"] == "matrix"
    mlp = MLP(MLPArgs(input_dim=4, num_classes=3, hidden=(8, 8)))
    roles = {n: r for g in param_groups(mlp, 0.1) for n, r in zip(g["param_names"], g["param_roles"])}
    assert roles == {"net.0.weight": "matrix", "net.0.bias": "vector", "net.2.weight": "matrix",
                     "net.2.bias": "vector", "net.4.weight": "output", "net.4.bias": "vector"}


# docs/optimizers.md, "memory per parameter": fp32 parameters, one 512 x 512 matrix (so the 4-byte
# step counters and per-tensor maps are negligible).
DOCUMENTED = {
    "gd": 0.0, "sgd": 0.0, "momentum": 4.0, "nesterov": 4.0, "adagrad": 4.0, "rmsprop": 4.0,
    "adam": 8.0, "adamw": 8.0, "lamb": 8.0, "lars": 4.0, "lion": 4.0,
    "muon": 4.0,  # the matrix is hidden (a plain group has no roles): momentum only
    "adafactor": 2 * 512 * 4 / (512 * 512),  # a row and a column factor
    "adamw8bit": 2.0 + 2 * 4 / 256,  # two uint8 codes + a float32 absmax per 256-block, per moment
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_state_bytes_per_param_as_documented(name):
    p = torch.nn.Parameter(torch.randn(512, 512))
    opt = build_optimizer(name, [{"params": [p]}], lr=1e-3, weight_decay=0.0)
    p.grad = torch.randn_like(p)
    opt.step()
    # + the step counter(s) and, for adamw8bit, its two shared 256-entry quantization maps.
    assert state_bytes_per_param(opt) == pytest.approx(DOCUMENTED[name], abs=2 * 256 * 4 / p.numel() + 1e-4)
