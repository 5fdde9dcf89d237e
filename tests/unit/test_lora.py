"""LoRA with peft on the native families (models/lora.py): only the adapters train, the base weights
stay bit for bit, merging gives W + alpha/rank·B·A, and a recorded description rebuilds the
structure."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scaletrain.errors import UserError
from scaletrain.models import build_model, get_family, model_from_config_json
from scaletrain.models.lora import apply_lora, default_targets, lora_layers, merge_lora

pytest.importorskip("peft")

GPT = {"vocab_size": 64, "seq_len": 16, "n_layer": 2, "n_head": 2, "d_model": 32}
LLAMA = {"vocab_size": 64, "seq_len": 16, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "d_model": 32, "multiple_of": 32,
         "rope_theta": 10000.0}
SPEC = {"rank": 4, "alpha": 8.0, "dropout": 0.0}


def _model(name: str, args: dict, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name, args)


def _batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 64, (8, 17), generator=g)
    return x[:, :-1], x[:, 1:]


@pytest.mark.parametrize("name, args, targets", [
    ("gpt", GPT, ["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"]),
    ("llama", LLAMA, ["attention.wq", "attention.wk", "attention.wv", "attention.wo",
                      "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"]),
])
def test_default_targets_are_every_linear_layer_of_a_block(name, args, targets):
    model = _model(name, args)
    assert sorted(default_targets(model, get_family(name).plan)) == sorted(targets)


@pytest.mark.parametrize("name, args", [("gpt", GPT), ("llama", LLAMA)])
def test_only_the_adapters_train_and_the_base_stays_bit_for_bit(name, args):
    model = _model(name, args)
    x, y = _batch()
    with torch.no_grad():
        before = model(x)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, {**SPEC, "target_modules": default_targets(model, get_family(name).plan)})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    with torch.no_grad():  # B starts at zero: the adapted model computes what the model did
        assert torch.equal(model(x), before)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.1
    assert len(opt.state) == len(trainable)  # optimizer state for the adapters only
    now = model.state_dict()
    for key, value in base.items():  # under peft's names: `x.qkv.weight` is `x.qkv.base_layer.weight`
        mapped = key if key in now else key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(now[mapped], value), key


def test_merge_gives_base_plus_scaled_product():
    model = _model("gpt", GPT)
    apply_lora(model, {**SPEC, "target_modules": ["attn.qkv", "mlp.fc"]})
    with torch.no_grad():
        for layer in lora_layers(model).values():  # adapters as training would leave them
            layer.lora_B["default"].weight.normal_(0, 0.1)
    x, _ = _batch()
    with torch.no_grad():
        unmerged = model(x)
    expected = {}
    for name, layer in lora_layers(model).items():
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        expected[name] = layer.get_base_layer().weight.detach() + SPEC["alpha"] / SPEC["rank"] * (b @ a).detach()
    merge_lora(model)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())
    for name, weight in expected.items():
        assert torch.allclose(model.get_submodule(name).weight, weight, atol=1e-6, rtol=0)
    with torch.no_grad():
        assert (model(x) - unmerged).abs().max() < 1e-5
    assert set(model.state_dict()) == set(_model("gpt", GPT).state_dict())  # the plain names again


def test_a_recorded_description_rebuilds_the_adapters():
    model = _model("llama", LLAMA)
    spec = {**SPEC, "target_modules": ["attention.wq", "attention.wv"]}
    apply_lora(model, spec)
    rebuilt = model_from_config_json({"name": "llama", "args": model.args_dict(), "lora": spec})
    assert set(rebuilt.state_dict()) == set(model.state_dict())
    assert len(lora_layers(rebuilt)) == 4  # two layers x two targets


@pytest.mark.parametrize("spec, named", [
    ({**SPEC, "target_modules": ["no_such_layer"]}, "model.lora.target_modules"),
    ({**SPEC, "rank": 0, "target_modules": ["attn.qkv"]}, "lora.rank"),
    ({"rank": 4, "target_modules": ["attn.qkv"]}, "keys"),
])
def test_a_bad_description_is_refused_by_key(spec, named):
    with pytest.raises(UserError, match=named):
        apply_lora(_model("gpt", GPT), spec)
