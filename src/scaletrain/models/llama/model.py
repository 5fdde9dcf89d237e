"""Llama 3 decoder, plain nn.Module: RMSNorm, rotary positions, grouped-query attention, SwiGLU.

Module names follow Meta's reference and torchtitan (`tok_embeddings`, `layers.{i}.attention.wq`
/ `wk` / `wv` / `wo`, `layers.{i}.attention.q_norm` / `k_norm` (QK-norm only),
`layers.{i}.feed_forward.w1` (gate) / `w3` (up) / `w2` (down), `layers.{i}.attention_norm`,
`layers.{i}.ffn_norm`, `norm`, `output`). They are a contract: the tensor-parallel plan, pipeline
stages and lr-multiplier globs address them by name, and a Hugging Face export maps them
one to one (`model.layers.{i}.self_attn.q_proj`, `mlp.gate_proj`, ...; wq and wk rows permuted
for HF's rotary layout, see rope.py).

The model never reads a head count from its args in forward: a column-wise tensor-parallel
shard of wq / wk / wv holds whole heads, and the local counts follow from the tensors' widths.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from scaletrain.errors import UserError
from scaletrain.models.args import args_from_dict
from scaletrain.models.attention import causal_attention
from scaletrain.models.lm import document_mask, sample
from scaletrain.models.llama.rope import apply_rope, rope_tables

_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def llama_ffn_dim(d_model: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """Meta's SwiGLU width: 2/3 of 4·d (three matrices cost what GELU's two at 4·d cost), times
    ffn_dim_multiplier, rounded up to a multiple of multiple_of (8B: 4096 -> 14336)."""
    hidden = int(2 * 4 * d_model / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class LlamaArgs:
    vocab_size: int
    seq_len: int
    n_layer: int
    n_head: int
    d_model: int
    n_kv_head: int | None = None  # None: n_head (plain multi-head attention)
    d_ff: int | None = None  # None: llama_ffn_dim(d_model, multiple_of, ffn_dim_multiplier)
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_theta: float = 500000.0
    rope_scaling: dict | None = None  # Llama 3.1: {factor, low_freq_factor, high_freq_factor, original_max_position_embeddings}
    qk_norm: bool = False  # RMSNorm over each head of q and k before the rotation (Qwen3, OLMo 2)
    tie_embeddings: bool = False
    norm_eps: float = 1e-5
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for key in ("vocab_size", "seq_len", "n_layer", "n_head", "d_model", "multiple_of"):
            if not _positive_int(getattr(self, key)):
                raise UserError(f"model.{key} must be a positive integer, got {getattr(self, key)!r}")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.ffn_dim_multiplier is not None and not (_number(self.ffn_dim_multiplier)
                                                        and self.ffn_dim_multiplier > 0):
            raise UserError(f"model.ffn_dim_multiplier must be a positive number, got {self.ffn_dim_multiplier!r}")
        if self.d_ff is None:  # resolved here so that args_dict (model_config.json) is explicit
            self.d_ff = llama_ffn_dim(self.d_model, self.multiple_of, self.ffn_dim_multiplier)
        for key in ("n_kv_head", "d_ff"):
            if not _positive_int(getattr(self, key)):
                raise UserError(f"model.{key} must be a positive integer, got {getattr(self, key)!r}")
        if self.d_model % self.n_head:
            raise UserError(f"model.d_model ({self.d_model}) must be divisible by model.n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise UserError(f"model.n_kv_head ({self.n_kv_head}) must divide model.n_head ({self.n_head}): "
                            "each key/value head serves a whole group of query heads")
        if self.head_dim % 2:
            raise UserError(f"model.d_model / model.n_head must be even for rotary positions, got {self.head_dim}")
        for key in ("rope_theta", "norm_eps"):
            if not (_number(getattr(self, key)) and getattr(self, key) > 0):
                raise UserError(f"model.{key} must be a positive number, got {getattr(self, key)!r}")
        if not (_number(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise UserError(f"model.dropout must be in [0, 1), got {self.dropout!r}")
        for key in ("qk_norm", "tie_embeddings"):
            if not isinstance(getattr(self, key), bool):
                raise UserError(f"model.{key} must be true or false, got {getattr(self, key)!r}")
        if self.rope_scaling is not None:
            self.rope_scaling = _check_scaling(self.rope_scaling)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


def _check_scaling(scaling: object) -> dict:
    if not isinstance(scaling, dict) or set(scaling) != set(_SCALING_KEYS):
        raise UserError(f"model.rope_scaling must be a mapping with exactly the keys {list(_SCALING_KEYS)}, "
                        f"got {scaling!r}")
    for key in _SCALING_KEYS:
        if not (_number(scaling[key]) and scaling[key] > 0):
            raise UserError(f"model.rope_scaling.{key} must be a positive number, got {scaling[key]!r}")
    if not _positive_int(scaling["original_max_position_embeddings"]):
        raise UserError("model.rope_scaling.original_max_position_embeddings must be a positive integer, "
                        f"got {scaling['original_max_position_embeddings']!r}")
    if scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        raise UserError(f"model.rope_scaling.high_freq_factor ({scaling['high_freq_factor']}) must be above "
                        f"model.rope_scaling.low_freq_factor ({scaling['low_freq_factor']})")
    return {key: scaling[key] for key in _SCALING_KEYS}


class RMSNorm(nn.Module):
    """Meta's RMSNorm: normalised in fp32 and cast back before the weight, whatever the input dtype
    (bf16 activations under FSDP's mixed precision keep an fp32 reduction)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class Attention(nn.Module):
    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.head_dim = args.head_dim
        self.dropout = args.dropout
        self.wq = nn.Linear(args.d_model, args.n_head * self.head_dim, bias=False)
        self.wk = nn.Linear(args.d_model, args.n_kv_head * self.head_dim, bias=False)
        self.wv = nn.Linear(args.d_model, args.n_kv_head * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_head * self.head_dim, args.d_model, bias=False)
        if args.qk_norm:  # one weight of head_dim shared by all heads: unchanged by a TP shard
            self.q_norm = RMSNorm(self.head_dim, args.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, args.norm_eps)
        self.resid_drop = nn.Dropout(args.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """`rope`: (cos, sin) broadcastable to [B, T, 1, head_dim/2]; `mask`: None for plain causal
        attention, else a bool [B, 1, T, T] (True = may attend)."""
        B, T, _ = x.shape
        # -1: the heads this module holds (all of them, or a tensor-parallel shard's share).
        q = self.wq(x).view(B, T, -1, self.head_dim)
        k = self.wk(x).view(B, T, -1, self.head_dim)
        v = self.wv(x).view(B, T, -1, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, T, head_dim]
        # Query head h reads key/value head h // (q heads / kv heads), as SDPA's enable_gqa does
        # (repeat_interleave); a column shard keeps that: rank r holds q heads r·H/tp.. and kv
        # heads r·K/tp.., and the local group size is the same H/K.
        y = causal_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, mask=mask)
        return self.resid_drop(self.wo(y.transpose(1, 2).reshape(B, T, -1)))


class FeedForward(nn.Module):
    """SwiGLU (Shazeer 2020): w2(silu(w1 x) * w3 x)."""

    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.w1 = nn.Linear(args.d_model, args.d_ff, bias=False)  # gate
        self.w3 = nn.Linear(args.d_model, args.d_ff, bias=False)  # up
        self.w2 = nn.Linear(args.d_ff, args.d_model, bias=False)  # down
        self.drop = nn.Dropout(args.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class TransformerBlock(nn.Module):
    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.attention_norm = RMSNorm(args.d_model, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.d_model, args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), rope, mask)
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.d_model)
        self.drop = nn.Dropout(args.dropout)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layer))
        self.norm = RMSNorm(args.d_model, args.norm_eps)
        self.output = nn.Linear(args.d_model, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # Non-persistent: derived data, kept out of checkpoints; still follows .to(device).
        self.register_buffer("freqs_cos", torch.empty(args.seq_len, args.head_dim // 2), persistent=False)
        self.register_buffer("freqs_sin", torch.empty(args.seq_len, args.head_dim // 2), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) for every matrix; the residual output projections (wo, w2) scaled by
        1/sqrt(2·n_layer) so the residual stream's variance does not grow with depth (GPT-2);
        norms to one. Also (re)computes the rotary tables, so a model built on the meta device and
        materialised with `to_empty` is complete after this call."""
        std = 0.02
        resid_std = std / math.sqrt(2 * self.args.n_layer)
        for name, mod in self.named_modules():
            if isinstance(mod, nn.Linear):
                if self.args.tie_embeddings and mod is self.output:
                    continue  # shares tok_embeddings.weight, initialised as the embedding
                resid = name.endswith(("attention.wo", "feed_forward.w2"))
                nn.init.normal_(mod.weight, mean=0.0, std=resid_std if resid else std)
            elif isinstance(mod, nn.Embedding):
                nn.init.normal_(mod.weight, mean=0.0, std=std)
            elif isinstance(mod, RMSNorm):
                mod.reset_parameters()
        a = self.args
        cos, sin = rope_tables(a.seq_len, a.head_dim, a.rope_theta, a.rope_scaling, device=self.freqs_cos.device)
        with torch.no_grad():
            self.freqs_cos.copy_(cos)
            self.freqs_sin.copy_(sin)

    def forward(self, idx: torch.Tensor, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V]. `doc_ids` [B, T] (optional): the document of each token in a packed
        sequence; attention then stays inside a document and positions restart at each document's
        first token, so a token's logits are those of its document run alone."""
        B, T = idx.shape
        if T > self.args.seq_len:
            raise ValueError(f"sequence length {T} exceeds model seq_len {self.args.seq_len}")
        mask = None
        rope = (self.freqs_cos[:T].unsqueeze(1), self.freqs_sin[:T].unsqueeze(1))  # [T, 1, hd/2]
        if doc_ids is not None:
            mask, pos = document_mask(doc_ids)
            rope = (self.freqs_cos[pos].unsqueeze(2), self.freqs_sin[pos].unsqueeze(2))  # [B, T, 1, hd/2]
        x = self.drop(self.tok_embeddings(idx))
        for layer in self.layers:
            x = layer(x, rope, mask)
        return self.output(self.norm(x))

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Trainable-parameter count; tied weights count once (parameters() dedups them).
        exclude_embedding drops tok_embeddings (and hence a tied head; an untied head stays)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_embeddings.weight.numel() if exclude_embedding else n

    def flops_per_token(self) -> float:
        """Training FLOPs per token at full context (PaLM, appendix B), as the GPT counts them:

            6·N + 12·L·(n_head·head_dim)·T

        N = matmul weights: per layer wq and wo d·(n_head·head_dim) each, wk and wv
        d·(n_kv_head·head_dim) each (grouped-query attention's smaller projections), w1, w3, w2
        d·d_ff each, plus the output head V·d (a matmul even when tied to the embedding).
        Embedding lookups, norms, the rotation and the SwiGLU product are ignored. 12·L·(n_head·
        head_dim)·T is attention scores and values over the *full* T×T matrix for every query head
        (key/value heads shared by a group are still multiplied once per query head), causal
        masking not discounted.
        """
        a = self.args
        q_width, kv_width = a.n_head * a.head_dim, a.n_kv_head * a.head_dim
        per_layer = 2 * a.d_model * q_width + 2 * a.d_model * kv_width + 3 * a.d_model * a.d_ff
        n_matmul = a.n_layer * per_layer + a.vocab_size * a.d_model
        return float(6 * n_matmul + 12 * a.n_layer * q_width * a.seq_len)

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Autoregressive sampling within the training context (models/lm.py)."""
        return sample(self, idx, max_new_tokens, context=self.args.seq_len, temperature=temperature, top_k=top_k,
                      generator=generator)

    def args_dict(self) -> dict:
        return dataclasses.asdict(self.args)

    @classmethod
    def from_args_dict(cls, d: dict) -> "Llama":
        return cls(args_from_dict(LlamaArgs, d, "model"))
