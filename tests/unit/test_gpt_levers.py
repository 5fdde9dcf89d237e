"""The GPT's recipe options against hand-written references: QK-norm (`model.qk_norm`) and ReLU²
(`model.activation=relu2`)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scaletrain.models.gpt.model import GPT, CausalSelfAttention, FeedForward, GPTArgs


def _args(**kw) -> GPTArgs:
    return GPTArgs(**{"vocab_size": 50, "seq_len": 12, "n_layer": 2, "n_head": 2, "d_model": 16, **kw})


def _reference_attention(attn: CausalSelfAttention, x: torch.Tensor, qk_norm: bool) -> torch.Tensor:
    """Attention written out: per-head q, k, v from the fused projection, q and k divided by their
    RMS, causal softmax(q k^T / sqrt(hd)) v, then the output projection."""
    B, T, _ = x.shape
    hd = attn.head_dim
    qkv = x @ attn.qkv.weight.T  # [B, T, H*3*hd], laid out head by head
    heads = qkv.view(B, T, -1, 3, hd)
    q, k, v = heads[..., 0, :], heads[..., 1, :], heads[..., 2, :]  # [B, T, H, hd]
    if qk_norm:
        q = q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + 1e-6)
        k = k / torch.sqrt(k.pow(2).mean(-1, keepdim=True) + 1e-6)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(hd)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    y = torch.einsum("bhts,bshd->bthd", weights, v).reshape(B, T, -1)
    return y @ attn.proj.weight.T


@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_matches_the_written_out_reference(qk_norm):
    torch.manual_seed(0)
    attn = CausalSelfAttention(_args(qk_norm=qk_norm))
    x = torch.randn(3, 7, 16)
    torch.testing.assert_close(attn(x), _reference_attention(attn, x, qk_norm), rtol=1e-5, atol=1e-6)


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    torch.manual_seed(0)
    attn = CausalSelfAttention(_args(qk_norm=True))
    x = torch.randn(2, 9, 16)
    before = attn(x)
    with torch.no_grad():  # rows of head h: [q k v] blocks of hd; scale every q and k row by 50
        rows = attn.qkv.weight.view(2, 3, attn.head_dim, 16)
        rows[:, :2] *= 50.0
    torch.testing.assert_close(attn(x), before, rtol=1e-4, atol=1e-5)


def test_relu2_mlp_is_relu_squared():
    torch.manual_seed(0)
    mlp = FeedForward(_args(activation="relu2"))
    x = torch.randn(4, 5, 16)
    expected = (F.relu(x @ mlp.fc.weight.T) ** 2) @ mlp.proj.weight.T
    torch.testing.assert_close(mlp(x), expected, rtol=1e-5, atol=1e-6)
    gelu = FeedForward(_args())
    torch.testing.assert_close(gelu(x), F.gelu(x @ gelu.fc.weight.T, approximate="tanh") @ gelu.proj.weight.T)


def test_options_round_trip_and_defaults_keep_old_specs():
    plain = GPT(_args())
    assert "qk_norm" not in plain.args_dict() and "activation" not in plain.args_dict()
    tuned = GPT(_args(qk_norm=True, activation="relu2", rope=True))
    again = GPT.from_args_dict(tuned.args_dict())
    assert again.args.qk_norm and again.args.activation == "relu2"
    again.load_state_dict(tuned.state_dict())
    idx = torch.randint(0, 50, (2, 12))
    torch.testing.assert_close(again(idx), tuned(idx))
    with pytest.raises(Exception, match="model.activation"):
        _args(activation="swish")
