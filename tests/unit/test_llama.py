"""The Llama family against references: torch's RMSNorm, Meta's complex-number RoPE, HF's Llama 3.1
frequency scaling, naive attention, repeated-head attention, the published parameter counts, and
the bytes autograd really saves (for plan's activation memory)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import saved_tensors_hooks
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from scaletrain.config.load import load_config
from scaletrain.errors import UserError
from scaletrain.models.attention import explicit_attention_bytes
from scaletrain.models import model_from_config_json
from scaletrain.models.family import DataShape, ModelFamily
from scaletrain.models.llama.config import LlamaConfig
from scaletrain.models.llama.family import FAMILY
from scaletrain.models.llama.model import Attention, FeedForward, Llama, LlamaArgs, RMSNorm, TransformerBlock, llama_ffn_dim
from scaletrain.models.llama.parallelize import TP_PLAN, LlamaStage
from scaletrain.models.llama.rope import apply_rope, inv_frequencies, rope_tables
from scaletrain.models.llama.spec import llama_spec

TINY = dict(vocab_size=61, seq_len=16, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=48)
LLAMA_31 = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
LLAMA_32 = dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)


def tiny(**over) -> Llama:
    torch.manual_seed(0)
    return Llama(LlamaArgs(**{**TINY, **over}))


# ---- references, written out as their authors did ----------------------------------------------


def precompute_freqs_cis(dim: int, end: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """Meta's llama3 `precompute_freqs_cis` (reference model.py), `apply_scaling` parametrised."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    if scaling:
        freqs = meta_apply_scaling(freqs, **scaling)
    t = torch.arange(end, device=freqs.device, dtype=torch.float32)
    freqs = torch.outer(t, freqs)
    return torch.polar(torch.ones_like(freqs), freqs)  # complex64


def meta_apply_scaling(freqs, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings):
    low_freq_wavelen = original_max_position_embeddings / low_freq_factor
    high_freq_wavelen = original_max_position_embeddings / high_freq_factor
    new_freqs = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            new_freqs.append(freq)
        elif wavelen > low_freq_wavelen:
            new_freqs.append(freq / factor)
        else:
            smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            new_freqs.append((1 - smooth) * freq / factor + smooth * freq)
    return torch.tensor(new_freqs, dtype=freqs.dtype, device=freqs.device)


def hf_llama3_inv_freq(dim: int, base: float, rope_scaling: dict) -> torch.Tensor:
    """transformers' `_compute_llama3_parameters` (modeling_rope_utils.py)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    factor = rope_scaling["factor"]
    low_freq_factor = rope_scaling["low_freq_factor"]
    high_freq_factor = rope_scaling["high_freq_factor"]
    old_context_len = rope_scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Meta's `apply_rotary_emb` for one tensor [B, T, heads, head_dim]."""
    x_ = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    freqs_cis = freqs_cis.view(1, x_.shape[1], 1, x_.shape[-1])
    return torch.view_as_real(x_ * freqs_cis).flatten(3).type_as(x)


def naive_attention(attn: Attention, x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """softmax(QKᵀ/√d + causal mask)·V with Meta's repeat_kv, then wo."""
    B, T, _ = x.shape
    hd = attn.head_dim
    q = (x @ attn.wq.weight.T).view(B, T, -1, hd)
    k = (x @ attn.wk.weight.T).view(B, T, -1, hd)
    v = (x @ attn.wv.weight.T).view(B, T, -1, hd)
    q, k = apply_rotary_emb(q, freqs_cis[:T]), apply_rotary_emb(k, freqs_cis[:T])
    n_rep = q.shape[2] // k.shape[2]
    k = k[:, :, :, None, :].expand(B, T, k.shape[2], n_rep, hd).reshape(B, T, -1, hd)
    v = v[:, :, :, None, :].expand(B, T, v.shape[2], n_rep, hd).reshape(B, T, -1, hd)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd) + torch.full((T, T), float("-inf")).triu(1)
    y = torch.softmax(scores, dim=-1) @ v
    return y.transpose(1, 2).reshape(B, T, -1) @ attn.wo.weight.T


def rope_for(T: int, head_dim: int, theta: float = 500000.0, scaling=None):
    cos, sin = rope_tables(T, head_dim, theta, scaling)
    return cos.unsqueeze(1), sin.unsqueeze(1)


# ---- pieces --------------------------------------------------------------------------------------


def test_rmsnorm_matches_torch():
    torch.manual_seed(0)
    ours, ref = RMSNorm(24, eps=1e-6), nn.RMSNorm(24, eps=1e-6)
    with torch.no_grad():
        ours.weight.normal_()
        ref.weight.copy_(ours.weight)
    x = torch.randn(3, 5, 24) * 3
    torch.testing.assert_close(ours(x), ref(x))
    # bf16 input: normalised in fp32, cast back, then the weight (Meta's order).
    xb = x.bfloat16()
    expected = (xb.float() * torch.rsqrt(xb.float().pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16() * ours.weight
    torch.testing.assert_close(ours(xb), expected)


@pytest.mark.parametrize("scaling", [None, LLAMA_31, LLAMA_32])
def test_rope_matches_metas_complex_rotation(scaling):
    torch.manual_seed(0)
    B, T, H, hd, theta = 2, 40, 3, 16, 500000.0
    x = torch.randn(B, T, H, hd)
    cos, sin = rope_for(T, hd, theta, scaling)
    torch.testing.assert_close(apply_rope(x, cos, sin), apply_rotary_emb(x, precompute_freqs_cis(hd, T, theta, scaling)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scaling", [LLAMA_31, LLAMA_32])
def test_llama3_frequency_scaling_matches_hf_and_meta(scaling):
    theta, hd = 500000.0, 128  # the 8B's and 1B's head dim and base: all three bands are populated
    ours = inv_frequencies(hd, theta, scaling)
    torch.testing.assert_close(ours, hf_llama3_inv_freq(hd, theta, scaling), rtol=1e-6, atol=0)
    plain = inv_frequencies(hd, theta)
    torch.testing.assert_close(ours, meta_apply_scaling(plain, **scaling), rtol=1e-6, atol=0)
    # The scaling changes the low frequencies only: the fastest pair is kept, the slowest slowed.
    assert ours[0] == plain[0] and ours[-1] == pytest.approx(plain[-1].item() / scaling["factor"])
    assert ((ours < plain) & (ours > plain / scaling["factor"])).any()  # the smoothed band


def test_gqa_attention_equals_naive_reference_and_repeated_heads():
    torch.manual_seed(0)
    args = LlamaArgs(**{**TINY, "n_head": 4, "n_kv_head": 2})
    gqa = Attention(args)
    x = torch.randn(2, 12, 32)
    rope = rope_for(12, args.head_dim)
    out = gqa(x, rope)
    torch.testing.assert_close(out, naive_attention(gqa, x, precompute_freqs_cis(args.head_dim, 12, 500000.0)),
                               rtol=1e-5, atol=1e-6)
    # The same weights as plain multi-head attention: each k/v head copied to its group of q heads.
    mha = Attention(LlamaArgs(**{**TINY, "n_head": 4, "n_kv_head": 4}))
    hd, d = args.head_dim, args.d_model
    with torch.no_grad():
        mha.wq.weight.copy_(gqa.wq.weight)
        mha.wo.weight.copy_(gqa.wo.weight)
        for name in ("wk", "wv"):
            w = getattr(gqa, name).weight.view(2, hd, d).repeat_interleave(2, dim=0).reshape(4 * hd, d)
            getattr(mha, name).weight.copy_(w)
    torch.testing.assert_close(mha(x, rope), out, rtol=1e-5, atol=1e-6)
    # Causal: a change at position 7 leaves the outputs before it unchanged.
    x2 = x.clone()
    x2[:, 7] += 1
    out2 = gqa(x2, rope)
    torch.testing.assert_close(out2[:, :7], out[:, :7], rtol=0, atol=1e-6)
    assert not torch.allclose(out2[:, 7:], out[:, 7:])


def test_qk_norm_normalises_each_head_before_the_rotation():
    torch.manual_seed(0)
    eps = 1e-12  # scale invariance holds up to eps
    attn = Attention(LlamaArgs(**{**TINY, "qk_norm": True, "norm_eps": eps}))
    x = torch.randn(2, 10, 32)
    with torch.no_grad():
        attn.q_norm.weight.normal_()
        attn.k_norm.weight.normal_()
        # Scaling wq and wk changes nothing: each head of q and k is normalised.
        scaled = copy.deepcopy(attn)
        scaled.wq.weight.mul_(7.0)
        scaled.wk.weight.mul_(3.0)  # (enlarged: eps stays negligible)
    rope = rope_for(10, attn.head_dim)
    torch.testing.assert_close(scaled(x, rope), attn(x, rope), rtol=1e-4, atol=1e-5)
    # And against the reference with the norm written out: wq's output per head through RMSNorm.
    hd = attn.head_dim

    def head_norm(t, w):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * w

    ref = copy.deepcopy(attn)
    del ref.q_norm, ref.k_norm
    q = head_norm((x @ attn.wq.weight.T).view(2, 10, -1, hd), attn.q_norm.weight)
    k = head_norm((x @ attn.wk.weight.T).view(2, 10, -1, hd), attn.k_norm.weight)
    fc = precompute_freqs_cis(hd, 10, 500000.0)
    q, k, v = apply_rotary_emb(q, fc), apply_rotary_emb(k, fc), (x @ attn.wv.weight.T).view(2, 10, -1, hd)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.repeat_interleave(2, 2).transpose(1, 2),
                                       v.repeat_interleave(2, 2).transpose(1, 2), is_causal=True)
    torch.testing.assert_close(attn(x, rope), y.transpose(1, 2).reshape(2, 10, -1) @ attn.wo.weight.T,
                               rtol=1e-5, atol=1e-6)


def test_swiglu_is_w2_of_silu_gate_times_up():
    torch.manual_seed(0)
    ff = FeedForward(LlamaArgs(**TINY))
    x = torch.randn(3, 5, 32)
    w1, w2, w3 = ff.w1.weight, ff.w2.weight, ff.w3.weight
    gate = x @ w1.T
    expected = (gate * torch.sigmoid(gate) * (x @ w3.T)) @ w2.T
    torch.testing.assert_close(ff(x), expected, rtol=1e-5, atol=1e-6)


def test_ffn_width_follows_metas_rule():
    assert llama_ffn_dim(4096, 1024, 1.3) == 14336  # Llama 3 8B
    assert llama_ffn_dim(4096, 256, None) == 11008  # Llama 2 7B
    assert llama_ffn_dim(64, 64, None) == 192  # the llama-tiny preset
    assert LlamaArgs(**{**TINY, "d_ff": None, "multiple_of": 64}).d_ff == 64 * math.ceil(int(2 * 4 * 32 / 3) / 64)


# ---- the whole model ---------------------------------------------------------------------------


def test_shapes_causality_and_names():
    model = tiny().eval()
    idx = torch.randint(0, 61, (3, 16))
    logits = model(idx)
    assert logits.shape == (3, 16, 61)
    idx2 = idx.clone()
    idx2[:, 9] = (idx2[:, 9] + 1) % 61
    logits2 = model(idx2)
    torch.testing.assert_close(logits[:, :9], logits2[:, :9], rtol=0, atol=1e-6)
    assert not torch.allclose(logits[:, 9:], logits2[:, 9:])
    with pytest.raises(ValueError, match="seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))
    names = dict(model.named_modules())
    for n in ["tok_embeddings", "norm", "output", "layers.0.attention_norm", "layers.0.ffn_norm",
              *(f"layers.1.{sub}" for sub in TP_PLAN)]:
        assert n in names, n
    assert not any("freqs" in k for k in model.state_dict())  # derived tables are not checkpointed


def test_parameter_counts_tied_and_untied():
    V, L, d, H, K, ff = 61, 2, 32, 4, 2, 48
    hd = d // H
    per_layer = 2 * d + d * H * hd + 2 * d * K * hd + H * hd * d + 3 * d * ff  # 2 norms, wq wk wv wo, w1 w3 w2
    tied = V * d + L * per_layer + d  # + final norm; the head is the embedding
    assert tiny(tie_embeddings=True).num_params() == tied
    untied = tiny(tie_embeddings=False)
    assert untied.num_params() == tied + V * d
    assert untied.num_params(exclude_embedding=True) == tied
    assert tiny(qk_norm=True).num_params() == untied.num_params() + L * 2 * hd
    model = tiny(tie_embeddings=True)
    assert model.output.weight is model.tok_embeddings.weight


def test_flops_per_token_explicit_and_counted():
    model = tiny()
    a = model.args
    q, kv = a.n_head * a.head_dim, a.n_kv_head * a.head_dim
    n = a.n_layer * (2 * a.d_model * q + 2 * a.d_model * kv + 3 * a.d_model * a.d_ff) + a.vocab_size * a.d_model
    assert model.flops_per_token() == 6 * n + 12 * a.n_layer * q * a.seq_len
    # torch's counter on the MATH backend (k/v repeated to every query head, full T x T) agrees.
    B, T = 2, a.seq_len
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        model(torch.randint(0, a.vocab_size, (B, T))).sum().backward()
    assert counter.get_total_flops() / (B * T) == pytest.approx(model.flops_per_token(), rel=0.01)


def test_init_deterministic_scaled_and_complete_after_meta():
    a, b = tiny(), tiny()
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    torch.manual_seed(0)
    big = Llama(LlamaArgs(vocab_size=64, seq_len=8, n_layer=8, n_head=4, d_model=256, d_ff=512))
    assert big.layers[0].attention.wq.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for w in (big.layers[0].attention.wo.weight, big.layers[0].feed_forward.w2.weight):
        assert w.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert torch.equal(big.norm.weight, torch.ones(256))
    # Built on meta, materialised, reset: the rotary tables are back.
    with torch.device("meta"):
        meta = Llama(LlamaArgs(**{**TINY, "rope_scaling": LLAMA_31}))
    meta.to_empty(device="cpu").reset_parameters()
    ref = tiny(rope_scaling=LLAMA_31)
    assert torch.equal(meta.freqs_cos, ref.freqs_cos) and torch.equal(meta.freqs_sin, ref.freqs_sin)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_document_mask_gives_each_document_the_logits_it_has_alone(qk_norm):
    model = tiny(qk_norm=qk_norm).eval()
    lengths = [4, 7, 2, 3]
    doc_ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)]).unsqueeze(0)
    idx = torch.randint(0, 61, (1, 16))
    with torch.no_grad():
        packed = model(idx, doc_ids=doc_ids)[0]
        start = 0
        for n in lengths:
            torch.testing.assert_close(packed[start:start + n], model(idx[:, start:start + n])[0], rtol=1e-5, atol=1e-5)
            start += n
        # Without the mask the second document's logits see the first one: they differ.
        assert (model(idx)[0, 4:11] - packed[4:11]).abs().max() > 1e-3
        # One document per row: the mask path equals the default causal path.
        torch.testing.assert_close(model(idx, doc_ids=torch.zeros_like(idx)), model(idx))


def test_generate_seeded_greedy_and_mode_restored():
    model = tiny()
    model.train()
    prompt = torch.randint(0, 61, (2, 20))  # longer than seq_len: the context is cropped
    outs = [model.generate(prompt, 6, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(1))
            for _ in range(2)]
    assert outs[0].shape == (2, 26) and torch.equal(outs[0], outs[1]) and torch.equal(outs[0][:, :20], prompt)
    other = model.generate(prompt, 6, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(other, outs[0])
    assert model.training
    greedy = model.generate(prompt, 4, temperature=0)
    with torch.no_grad():
        first = model.eval()(prompt[:, -16:])[:, -1].argmax(-1)
    assert torch.equal(greedy[:, 20], first)


def test_args_validation_names_the_key():
    with pytest.raises(UserError, match=r"model\.n_kv_head \(3\) must divide model\.n_head \(4\)"):
        LlamaArgs(**{**TINY, "n_kv_head": 3})
    with pytest.raises(UserError, match=r"model\.d_model \(30\) must be divisible by model\.n_head"):
        LlamaArgs(**{**TINY, "d_model": 30})
    with pytest.raises(UserError, match=r"model\.rope_scaling\.high_freq_factor"):
        LlamaArgs(**TINY, rope_scaling={**LLAMA_31, "high_freq_factor": 1.0})
    with pytest.raises(UserError, match=r"model\.rope_scaling must be a mapping"):
        LlamaArgs(**TINY, rope_scaling={"factor": 8.0})
    with pytest.raises(UserError, match=r"model\.rope_theta"):
        LlamaArgs(**TINY, rope_theta=float("nan"))
    with pytest.raises(UserError, match=r"unknown model key\(s\) \['n_heads'\]"):
        Llama.from_args_dict({**TINY, "n_heads": 4})


def test_args_dict_roundtrip():
    model = tiny(d_ff=None, rope_scaling=LLAMA_31, qk_norm=True)
    d = model.args_dict()
    assert d["d_ff"] == 256 and d["rope_scaling"] == LLAMA_31  # the rule's width, recorded
    again = model_from_config_json(json.loads(json.dumps({"name": "llama", "args": d})))
    assert isinstance(again, Llama) and again.args == model.args
    again.load_state_dict(model.state_dict())
    idx = torch.randint(0, 61, (1, 16))
    torch.testing.assert_close(again(idx), model(idx))


# ---- tensor parallel: a column shard holds whole heads -------------------------------------------


def _shard_linear(linear: nn.Linear, rows: slice | None = None, cols: slice | None = None) -> nn.Linear:
    w = linear.weight.detach()[rows or slice(None), cols or slice(None)]
    out = nn.Linear(w.shape[1], w.shape[0], bias=False)
    out.weight = nn.Parameter(w.clone())
    return out


def shard_block(block: TransformerBlock, rank: int, tp: int) -> TransformerBlock:
    """What rank `rank` of `tp` holds after the TP plan: wq/wk/wv/w1/w3 rows, wo/w2 columns."""
    shard = copy.deepcopy(block)
    for name, style in TP_PLAN.items():
        parent, child = name.split(".")
        linear = getattr(getattr(block, parent), child)
        n = (linear.out_features if style == "colwise" else linear.in_features) // tp
        part = slice(rank * n, (rank + 1) * n)
        setattr(getattr(shard, parent), child,
                _shard_linear(linear, rows=part) if style == "colwise" else _shard_linear(linear, cols=part))
    return shard


@pytest.mark.parametrize("qk_norm", [False, True])
def test_column_shards_infer_their_heads_and_sum_to_the_block(qk_norm):
    """Row-wise outputs are summed by TP's all-reduce: the shards' attention and MLP outputs must
    add up to the full block's, with head counts read from the sliced weights' widths."""
    torch.manual_seed(0)
    args = LlamaArgs(**{**TINY, "n_head": 4, "n_kv_head": 2, "qk_norm": qk_norm})
    block = TransformerBlock(args)
    x = torch.randn(2, 10, 32)
    rope = rope_for(10, args.head_dim)
    shards = [shard_block(block, r, 2) for r in range(2)]
    assert shards[0].attention.wk.weight.shape == (8, 32)  # one key/value head of 8 dims per rank
    h = block.attention_norm(x)
    torch.testing.assert_close(sum(s.attention(h, rope) for s in shards), block.attention(h, rope), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sum(s.feed_forward(h) for s in shards), block.feed_forward(h), rtol=1e-5, atol=1e-6)
    # A whole model of rank-0 shards runs its forward (shapes only: no all-reduce here).
    model = tiny(qk_norm=qk_norm)
    for i, layer in enumerate(model.layers):
        model.layers[i] = shard_block(layer, 0, 2)
    assert model(torch.randint(0, 61, (2, 16))).shape == (2, 16, 61)


def test_check_tp_names_the_key():
    model = tiny(n_head=4, n_kv_head=2, d_ff=48)
    FAMILY.plan.check_tp(model, 2)
    with pytest.raises(UserError, match=r"parallel\.tp_size: 4 .* model\.n_kv_head \(2\)"):
        FAMILY.plan.check_tp(model, 4)
    with pytest.raises(UserError, match=r"model\.n_head \(4\)"):
        FAMILY.plan.check_tp(model, 3)
    spec = llama_spec(model)
    assert spec.supports_tp(2) and not spec.supports_tp(4)
    # QK-norm's weights are shared by all heads: refused under TP (partial gradients per rank).
    with pytest.raises(UserError, match=r"model\.qk_norm: not supported with tensor parallel"):
        FAMILY.plan.check_tp(tiny(qk_norm=True), 2)
    FAMILY.plan.check_tp(tiny(qk_norm=True), 1)
    assert not llama_spec(tiny(qk_norm=True)).supports_tp(2) and llama_spec(tiny(qk_norm=True)).supports_tp(1)


# ---- pipeline stages -----------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_pipeline_stages_chain_to_the_model(tie):
    model = tiny(n_layer=3, tie_embeddings=tie).eval()
    plan = FAMILY.plan
    stages = [plan.pipeline_stage(model, range(0, 1), True, False), plan.pipeline_stage(model, range(1, 3), False, True)]
    idx = torch.randint(0, 61, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(stages[1](stages[0](idx)), model(idx))
    full = set(model.state_dict())
    keys = [set(s.state_dict()) for s in stages]
    assert keys[0] | keys[1] == full and "layers.2.attention.wq.weight" in keys[1]
    assert isinstance(stages[0], LlamaStage) and plan.blocks(model) is model.layers
    assert (plan.tied_parameter(model) is model.tok_embeddings.weight) == tie
    assert {"norm.weight", "output.weight"} <= keys[1] and "tok_embeddings.weight" in keys[0]
    assert "norm.weight" not in keys[0] and "output.weight" not in keys[0]


# ---- the spec: published counts, and activation bytes against what autograd saves -----------------


def _meta(**args) -> Llama:
    with torch.device("meta"):
        return Llama(LlamaArgs(**args))


def test_published_parameter_counts():
    shape = dict(vocab_size=128256, seq_len=8192, n_head=32, n_kv_head=8, rope_theta=500000.0)
    eight = llama_spec(_meta(**shape, n_layer=32, d_model=4096, multiple_of=1024, ffn_dim_multiplier=1.3,
                             rope_scaling=LLAMA_31))
    assert eight.params == 8_030_261_248 and eight.d_ff == 14336  # Meta's model card
    one = llama_spec(_meta(**shape, n_layer=16, d_model=2048, d_ff=8192, tie_embeddings=True, rope_scaling=LLAMA_32))
    assert one.params == 1_235_814_400
    assert one.block_params == 2 * 2048 + 2 * 2048**2 + 2 * 2048 * 512 + 3 * 2048 * 8192
    assert one.tp_params == 16 * (one.block_params - 2 * 2048)
    assert one.matmul_params == 16 * (one.block_params - 2 * 2048) + 128256 * 2048  # the tied head is a matmul


def _saved_bytes(fn, skip) -> int:
    """Bytes of the distinct storages autograd saves for backward during `fn()`, except `skip`'s."""
    skip = {t.untyped_storage().data_ptr() for t in skip}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        out = fn()  # kept alive until counted: no saved storage is freed and its address reused
    del out
    return sum(seen.values())


SHAPES = [dict(vocab_size=70, seq_len=24, n_layer=2, n_head=4, n_kv_head=2, d_model=48, d_ff=80),
          dict(vocab_size=50, seq_len=16, n_layer=3, n_head=8, n_kv_head=8, d_model=64, d_ff=96),
          dict(vocab_size=40, seq_len=32, n_layer=1, n_head=6, n_kv_head=2, d_model=96, d_ff=160)]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_spec_counts_the_bytes_autograd_saves(shape, qk_norm, precision):
    torch.manual_seed(0)
    args = SHAPES[shape]
    model = Llama(LlamaArgs(**args, qk_norm=qk_norm))
    spec = llama_spec(model)
    B = 2
    tokens = B * args["seq_len"]
    idx = torch.randint(0, args["vocab_size"], (B, args["seq_len"]))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        measured = _saved_bytes(lambda: model(idx), [*model.parameters(), *model.buffers()])
    weights = 2 * spec.matmul_params if precision == "bf16" else 0  # autocast's bf16 weight copies
    predicted = (spec.n_layer * spec.block_saved_bytes(tokens, precision) + spec.outside_saved_bytes(tokens, precision)
                 + weights)
    # The whole micro-batch: + the loss head's log-softmax (V fp32 per token).
    saved, _ = spec.activation_bytes(B, precision, ac=False)
    assert saved == predicted + tokens * 4 * args["vocab_size"]
    if precision == "bf16":  # on the CPU attention is written out (models/attention.py): what it keeps instead
        predicted += spec.n_layer * explicit_attention_bytes(B, args["seq_len"], *spec.attention_shape)
    assert predicted == measured


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_spec_counts_a_tensor_parallel_shard(precision):
    """One block as rank 0 of 2 holds it: the split tensors halve, the replicated ones do not."""
    torch.manual_seed(0)
    args = LlamaArgs(**SHAPES[0])
    spec = llama_spec(Llama(args))
    block = shard_block(TransformerBlock(args), 0, 2)
    x = torch.randn(2, 24, 48, requires_grad=True)
    rope = rope_for(24, args.head_dim)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        measured = _saved_bytes(lambda: block(x, rope), [*block.parameters(), *rope])
    local = [m.weight for m in block.modules() if isinstance(m, nn.Linear)]
    weights = 2 * sum(w.numel() for w in local) if precision == "bf16" else 0
    written_out = explicit_attention_bytes(2, 24, 4 / 2, 2 / 2, args.head_dim) if precision == "bf16" else 0
    assert measured == spec.block_saved_bytes(48, precision, tp=2) + weights + written_out
    assert sum(w.numel() for w in local) == spec.tp_params / args.n_layer / 2


@pytest.mark.parametrize("precision,tolerance", [("fp32", 0.0), ("bf16", 0.02)])
def test_spec_counts_dropout(precision, tolerance):
    """Dropout moves attention to SDPA's math kernel (T x T scores kept): exact in fp32; bf16
    within 2 % (the math kernel's casts under autocast are not modelled one by one)."""
    torch.manual_seed(0)
    args = {**SHAPES[1], "dropout": 0.1}
    model = Llama(LlamaArgs(**args))
    spec = llama_spec(model)
    idx = torch.randint(0, 50, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        measured = _saved_bytes(lambda: model(idx), [*model.parameters(), *model.buffers()])
    predicted = (spec.n_layer * spec.block_saved_bytes(32, precision) + spec.outside_saved_bytes(32, precision)
                 + (2 * spec.matmul_params if precision == "bf16" else 0))
    assert predicted == pytest.approx(measured, rel=tolerance, abs=0)


def test_activation_checkpointing_keeps_block_inputs():
    spec = llama_spec(_meta(**SHAPES[0]))
    full, _ = spec.activation_bytes(2, "fp32", ac=False)
    kept, transient = spec.activation_bytes(2, "fp32", ac=True)
    tokens = 2 * 24
    assert full - kept == spec.n_layer * (spec.block_saved_bytes(tokens, "fp32") - tokens * 4 * 48)
    assert transient > spec.block_saved_bytes(tokens, "fp32")  # one block recomputed in backward


# ---- the family and its config -------------------------------------------------------------------


def test_family_contract():
    assert isinstance(FAMILY, ModelFamily) and FAMILY.name == "llama" and FAMILY.config is LlamaConfig
    section = LlamaConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=48, tie_embeddings=True,
                          rope_scaling=LLAMA_31)
    args = FAMILY.args_from_config(section, DataShape(vocab_size=61, seq_len=16))
    model = FAMILY.module.from_args_dict(args)
    assert model.args == LlamaArgs(**{**TINY, "tie_embeddings": True, "rope_scaling": LLAMA_31})
    spec = FAMILY.spec(model)
    assert spec.kind == "llama" and spec.params == model.num_params() and spec.hidden == 32
    assert spec.units_per_sample == 16 and spec.flops_per_unit == model.flops_per_token()
    block = model.layers[0]
    for name in FAMILY.plan.tp_plan:
        assert isinstance(block.get_submodule(name), nn.Linear), name


@pytest.mark.parametrize("override,message", [
    ("model.n_kv_head=3", "model.n_kv_head: 3 must divide model.n_head (4)"),
    ("model.d_model=62", "model.d_model: 62 must be divisible by model.n_head (4)"),
    ("model.d_model=12", "model.d_model: d_model / n_head = 3 must be even"),
    ("model.rope_scaling={factor: 8, low_freq_factor: 4, high_freq_factor: 1, original_max_position_embeddings: 8192}",
     "model.rope_scaling.high_freq_factor: 1.0 must be above"),
    ("model.rope_theta=.inf", "model.rope_theta: input should be a finite number"),
    ("model.n_heads=4", "model.n_heads: unknown key"),
    ("model.rope_scaling={factor: 8}", "model.rope_scaling.low_freq_factor"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(UserError) as info:
        load_config("llama-tiny", [override])
    assert message in str(info.value)


@pytest.mark.parametrize("name,layers,params", [
    ("llama-tiny", 2, None), ("llama", 4, None), ("llama3.2-1b", 16, 1_235_814_400), ("llama3.1-8b", 32, 8_030_261_248),
])
def test_presets_load_and_build(name, layers, params):
    cfg = load_config(name)
    assert isinstance(cfg.model, LlamaConfig) and cfg.model.n_layer == layers and cfg.data.kind == "text"
    args = FAMILY.args_from_config(cfg.model, DataShape(cfg.data.vocab_size, cfg.data.seq_len))
    with torch.device("meta"):
        spec = llama_spec(Llama.from_args_dict(args))
    if params is not None:
        assert spec.params == params
    elif name == "llama":  # the gpt preset's size, within 15 %
        assert 1.7e6 < spec.params < 2.5e6


FLOATS = ["ffn_dim_multiplier", "rope_theta", "norm_eps", "dropout"]
INTS = ["n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "multiple_of"]


@pytest.mark.parametrize("key", FLOATS + INTS)
def test_every_numeric_key_refuses_non_finite_and_huge_values(key):
    for value in ([".inf", ".nan", "1e400"] if key in FLOATS else [str(2**63), "0"]):
        with pytest.raises(UserError) as info:
            load_config("llama-tiny", [f"model.{key}={value}"])
        assert str(info.value).startswith(f"model.{key}"), (value, str(info.value))


def test_rope_scaling_refuses_non_finite_values():
    scaling = {**LLAMA_31, "factor": ".inf"}
    with pytest.raises(UserError, match=r"^model\.rope_scaling\.factor: input should be a finite number"):
        load_config("llama-tiny", ["model.rope_scaling={" + ", ".join(f"{k}: {v}" for k, v in scaling.items()) + "}"])
