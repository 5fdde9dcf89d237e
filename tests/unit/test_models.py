import json
import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from scaletrain.errors import UserError
from scaletrain.models import build_model, model_from_config_json
from scaletrain.models.gpt.model import GPT, GPTArgs
from scaletrain.models.mlp.model import MLP, MLPArgs

TINY = dict(vocab_size=61, seq_len=16, n_layer=2, n_head=2, d_model=32)


def tiny_gpt(**over) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTArgs(**{**TINY, **over}))


@pytest.mark.parametrize("over", [{}, {"rope": True}, {"norm": "rmsnorm", "bias": True, "tie_embeddings": False}])
def test_gpt_shapes_and_causality(over):
    model = tiny_gpt(**over).eval()
    idx = torch.randint(0, 61, (3, 16))
    logits = model(idx)
    assert logits.shape == (3, 16, 61)
    t = 9
    idx2 = idx.clone()
    idx2[:, t] = (idx2[:, t] + 1) % 61
    logits2 = model(idx2)
    torch.testing.assert_close(logits[:, :t], logits2[:, :t], rtol=0, atol=1e-6)
    assert not torch.allclose(logits[:, t:], logits2[:, t:])
    assert model(idx[:, :5]).shape == (3, 5, 61)  # shorter than seq_len is fine


def test_gpt_too_long_raises():
    with pytest.raises(ValueError, match="seq_len"):
        tiny_gpt()(torch.zeros(1, 17, dtype=torch.long))


def test_rope_has_no_pos_emb_and_is_position_sensitive():
    model = tiny_gpt(rope=True).eval()
    assert not hasattr(model, "pos_emb")
    assert not any("rope" in k for k in model.state_dict())  # derived tables not checkpointed
    # Without position information the last token's output is invariant to permuting the
    # prefix (attention is a set operation); rotary encoding must break that symmetry.
    a = model(torch.tensor([[1, 2, 3, 4, 5]]))[0, -1]
    b = model(torch.tensor([[2, 1, 4, 3, 5]]))[0, -1]
    assert not torch.allclose(a, b, atol=1e-4)


def test_tied_weights_share_storage():
    model = tiny_gpt()
    assert model.lm_head.weight is model.tok_emb.weight
    assert model.lm_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    untied = tiny_gpt(tie_embeddings=False)
    assert untied.lm_head.weight.data_ptr() != untied.tok_emb.weight.data_ptr()


def test_submodule_names_for_tp_plans():
    names = dict(tiny_gpt().named_modules())
    for n in ["tok_emb", "pos_emb", "norm_f", "lm_head", "blocks.0.attn.qkv", "blocks.0.attn.proj",
              "blocks.1.mlp.fc", "blocks.1.mlp.proj", "blocks.1.norm1", "blocks.1.norm2"]:
        assert n in names, n
    assert names["blocks.0.attn.qkv"].out_features == 3 * 32


def test_num_params_manual_count():
    V, T, L, d = 61, 16, 2, 32
    ff = 4 * d
    per_layer = 2 * d + 3 * d * d + d * d + d * ff + ff * d  # norm1+norm2 (no bias), attn, mlp
    emb = V * d + T * d
    expected = emb + L * per_layer + d  # + final norm; tied head counted once
    model = tiny_gpt()
    assert model.num_params() == expected
    assert model.num_params(exclude_embedding=True) == expected - emb
    assert tiny_gpt(tie_embeddings=False).num_params() == expected + V * d


def test_init_deterministic_and_gpt2_style():
    a, b = tiny_gpt(), tiny_gpt()
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), na
    big = GPT(GPTArgs(vocab_size=64, seq_len=8, n_layer=4, n_head=4, d_model=256))
    assert big.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert big.blocks[0].mlp.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)


def test_flops_per_token_matches_flop_counter():
    model = tiny_gpt()
    a = model.args
    B, T = 2, a.seq_len
    idx = torch.randint(0, a.vocab_size, (B, T))
    counter = FlopCounterMode(display=False)
    # FlopCounterMode has no formula for CPU flash SDPA; the MATH backend exposes the
    # QK^T / AV bmms, which it counts over the full T x T matrix (causal mask not
    # discounted) - the same convention as PaLM's 12·L·d·T term.
    with sdpa_kernel(SDPBackend.MATH), counter:
        model(idx).float().sum().backward()
    measured = counter.get_total_flops() / (B * T)
    assert measured == pytest.approx(model.flops_per_token(), rel=0.02)
    # And the explicit figure: 6 FLOPs/MAC over matmul weights + full attention.
    n = a.n_layer * (4 * a.d_model**2 + 2 * a.d_model * a.d_ff) + a.vocab_size * a.d_model
    assert model.flops_per_token() == 6 * n + 12 * a.n_layer * a.d_model * T


def test_generate_seeded_and_greedy():
    model = tiny_gpt()
    model.train()
    prompt = torch.randint(0, 61, (2, 20))  # longer than seq_len: context is cropped
    outs = [model.generate(prompt, 6, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(1))
            for _ in range(2)]
    assert outs[0].shape == (2, 26)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0][:, :20], prompt)
    assert model.training  # mode restored
    greedy = model.generate(prompt, 4, temperature=0)
    with torch.no_grad():
        first = model.eval()(prompt[:, -16:])[:, -1].argmax(-1)
    assert torch.equal(greedy[:, 20], first)
    assert torch.equal(greedy, model.generate(prompt, 4, temperature=0))


def test_args_dict_roundtrip_and_build():
    model = tiny_gpt(rope=True)
    d = model.args_dict()
    assert d["d_ff"] == 128 and d["rope"] is True
    cfg = json.loads(json.dumps({"name": "gpt", "args": d}))
    again = model_from_config_json(cfg)
    assert isinstance(again, GPT) and again.args == model.args
    again.load_state_dict(model.state_dict())
    assert isinstance(GPT.from_args_dict(d), GPT)


@pytest.mark.parametrize("bad, key", [
    ({"d_model": 30, "n_head": 4}, "d_model"), ({"norm": "batchnorm"}, "norm"),
    ({"n_layer": 0}, "n_layer"), ({"colour": 1}, "colour"),
])
def test_gpt_bad_args_user_error(bad, key):
    with pytest.raises(UserError, match=key):
        build_model("gpt", {**TINY, **bad})


def test_build_model_errors():
    with pytest.raises(UserError, match="resnet"):
        build_model("resnet", {})
    with pytest.raises(UserError, match="seq_len"):
        build_model("gpt", {"vocab_size": 3, "n_layer": 1, "n_head": 1, "d_model": 4})
    with pytest.raises(UserError):
        model_from_config_json({"args": {}})


def test_mlp_shapes_params_flops():
    model = build_model("mlp", {"input_dim": 64, "num_classes": 10})
    assert isinstance(model, MLP)
    assert model(torch.randn(5, 64)).shape == (5, 10)
    assert model(torch.randn(5, 8, 8)).shape == (5, 10)  # images are flattened
    assert model.num_params() == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert model.flops_per_sample() == 6 * (64 * 128 + 128 * 64 + 64 * 10)
    with pytest.raises(ValueError):
        model(torch.randn(5, 63))


def test_mlp_args_roundtrip_and_dropout():
    m = MLP(MLPArgs(input_dim=4, num_classes=3, hidden=(8,), dropout=0.5))
    assert any(isinstance(x, torch.nn.Dropout) for x in m.net)
    d = json.loads(json.dumps(m.args_dict()))
    assert MLP.from_args_dict(d).args == m.args
    with pytest.raises(UserError, match="hidden"):
        MLPArgs(input_dim=4, num_classes=3, hidden=(0,))
