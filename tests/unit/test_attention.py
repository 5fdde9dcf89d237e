"""causal_attention: SDPA itself where it runs SDPA, and the written-out bf16 CPU path equal to
an fp32 SDPA reference within bf16's rounding, forward and backward, GQA and causality included."""

import pytest
import torch
import torch.nn.functional as F

import scaletrain.models.attention as attention
from scaletrain.models import build_model
from scaletrain.models.attention import EXPLICIT_MAX_T, causal_attention, explicit_attention


def qkv(B=2, H=4, K=4, T=64, hd=32, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, T, hd, generator=g).to(dtype).requires_grad_() for h in (H, K, K)]


def reference(q, k, v):
    """fp32 SDPA on the same (rounded) inputs, and its input gradients for a fixed upstream gradient."""
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    gqa = {"enable_gqa": True} if q.shape[1] != k.shape[1] else {}
    out = F.scaled_dot_product_attention(q32, k32, v32, is_causal=True, **gqa)
    return out, (q32, k32, v32)


@pytest.mark.parametrize("heads", [(4, 4), (4, 2)], ids=["mha", "gqa"])
def test_bf16_cpu_path_matches_fp32_sdpa_forward_and_backward(heads):
    q, k, v = qkv(H=heads[0], K=heads[1])
    assert explicit_attention(q, k)
    out = causal_attention(q, k, v)
    ref, leaves = reference(q, k, v)
    assert out.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: outputs of size ~1 agree to a few 1e-2
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=2e-2)
    upstream = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    out.backward(upstream.to(out.dtype))
    ref.backward(upstream)
    for got, want in zip((q, k, v), leaves):
        scale = want.grad.abs().max()
        assert (got.grad.float() - want.grad).abs().max() <= 0.03 * scale


def test_bf16_cpu_path_is_causal():
    q, k, v = qkv(T=32)
    out = causal_attention(q, k, v).detach()
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[:, :, 20:] = torch.randn_like(k2[:, :, 20:])  # change only keys and values after position 19
    v2[:, :, 20:] = 7.0
    out2 = causal_attention(q.detach(), k2, v2)
    assert torch.equal(out[:, :, :20], out2[:, :, :20])
    assert not torch.equal(out[:, :, 20:], out2[:, :, 20:])


def test_fp32_inputs_under_bf16_autocast_are_written_out_in_bf16():
    # QK-norm's outputs are fp32 under autocast; SDPA's autocast would cast them to bf16, so does this
    q, k, v = qkv(dtype=torch.float32)
    assert not explicit_attention(q, k)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert explicit_attention(q, k)
        out = causal_attention(q, k, v)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference(q, k, v)[0], atol=3e-2, rtol=2e-2)


def test_fp32_dropout_long_and_masked_calls_are_sdpa_itself():
    q, k, v = qkv(dtype=torch.float32)
    assert not explicit_attention(q, k)
    torch.testing.assert_close(causal_attention(q, k, v), F.scaled_dot_product_attention(q, k, v, is_causal=True),
                               atol=0, rtol=0)
    bq, bk, _ = qkv()
    assert not explicit_attention(bq, bk, dropout_p=0.1)
    lq, lk, _ = qkv(B=1, H=1, K=1, T=EXPLICIT_MAX_T + 1, hd=8)
    assert not explicit_attention(lq, lk)
    bq, bk, bv = qkv(T=16)
    mask = torch.ones(16, 16, dtype=torch.bool).tril().expand(2, 1, 16, 16)
    torch.testing.assert_close(causal_attention(bq, bk, bv, mask=mask),
                               F.scaled_dot_product_attention(bq, bk, bv, attn_mask=mask), atol=0, rtol=0)


@pytest.mark.parametrize("name,args", [
    ("gpt", dict(vocab_size=97, seq_len=48, n_layer=2, n_head=2, d_model=32, rope=True, dropout=0.0)),
    ("gpt", dict(vocab_size=97, seq_len=48, n_layer=2, n_head=2, d_model=32, rope=True, dropout=0.0, qk_norm=True)),
    ("llama", dict(vocab_size=97, seq_len=48, n_layer=2, n_head=4, n_kv_head=2, d_model=32, dropout=0.0)),
], ids=["gpt", "gpt-qk-norm", "llama-gqa"])
def test_models_under_bf16_autocast_agree_with_the_sdpa_path(name, args, monkeypatch):
    torch.manual_seed(0)
    model = build_model(name, args)
    x = torch.randint(0, 97, (2, 48))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explicit = model(x).float()
        monkeypatch.setattr(attention, "EXPLICIT_MAX_T", 0)  # every call goes to SDPA
        sdpa = model(x).float()
    assert not torch.equal(explicit, sdpa)  # two different computations ...
    torch.testing.assert_close(explicit, sdpa, atol=5e-2, rtol=5e-2)  # ... equal within bf16 rounding
