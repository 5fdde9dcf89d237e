"""GPT decoder (pre-norm, causal attention: `scaletrain.models.attention`), plain nn.Module.

Submodule names (`tok_emb`, `pos_emb`, `blocks.{i}.attn.qkv`, `blocks.{i}.attn.proj`,
`blocks.{i}.mlp.fc`, `blocks.{i}.mlp.proj`, `blocks.{i}.norm1/norm2`, `norm_f`, `lm_head`)
are a stable contract: checkpoints, lr-multiplier globs and this family's parallel plan
(`parallelize.py` beside this file) address them by name. Nothing outside this folder does.
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

_NORMS = ("layernorm", "rmsnorm")
_ACTIVATIONS = ("gelu", "relu2")
# Keys left out of args_dict at their default, so that models saved before they existed keep the
# same spec (a resume compares specs).
_OPTIONAL_DEFAULTS = {"qk_norm": False, "activation": "gelu"}


@dataclass
class GPTArgs:
    vocab_size: int
    seq_len: int
    n_layer: int
    n_head: int
    d_model: int
    d_ff: int | None = None  # None -> 4 * d_model (resolved in __post_init__ so configs are explicit)
    dropout: float = 0.0
    bias: bool = False
    norm: str = "layernorm"
    tie_embeddings: bool = True
    rope: bool = False  # rotary embeddings on q/k instead of a learned absolute position table
    # Queries and keys RMS-normalised per head, without a gain, before rotary and attention (the
    # nanoGPT speedrun's QK-norm; Dehghani et al. 2023): attention logits stay bounded, so a higher
    # learning rate stays stable.
    qk_norm: bool = False
    activation: str = "gelu"  # the MLP's: "gelu" (tanh approximation) or "relu2" (ReLU squared, So et al. 2021)
    # Per-block widths, set by structured pruning (scaletrain.compress): block i keeps layer_heads[i]
    # heads of d_model // n_head each and an MLP of layer_d_ff[i] units. None: every block has
    # n_head heads and d_ff units (the default; these keys are then left out of args_dict).
    layer_heads: list[int] | None = None
    layer_d_ff: list[int] | None = None

    def __post_init__(self) -> None:
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        for key in ("vocab_size", "seq_len", "n_layer", "n_head", "d_model", "d_ff"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"model.{key} must be a positive integer, got {value!r}")
        if self.d_model % self.n_head:
            raise UserError(f"model.d_model ({self.d_model}) must be divisible by model.n_head ({self.n_head})")
        if self.rope and (self.d_model // self.n_head) % 2:
            raise UserError(f"model.rope needs an even head dim, got d_model/n_head = {self.d_model // self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"model.dropout must be in [0, 1), got {self.dropout!r}")
        for key in ("layer_heads", "layer_d_ff"):
            value = getattr(self, key)
            if value is None:
                continue
            value = list(value)
            setattr(self, key, value)
            if len(value) != self.n_layer or any(not isinstance(v, int) or isinstance(v, bool) or v <= 0
                                                 for v in value):
                raise UserError(f"model.{key} must be {self.n_layer} positive integers (one per layer), "
                                f"got {value!r}")
        if self.norm not in _NORMS:
            raise UserError(f"model.norm must be one of {list(_NORMS)}, got {self.norm!r}")
        if self.activation not in _ACTIVATIONS:
            raise UserError(f"model.activation must be one of {list(_ACTIVATIONS)}, got {self.activation!r}")
        if not isinstance(self.qk_norm, bool):
            raise UserError(f"model.qk_norm must be true or false, got {self.qk_norm!r}")


def _make_norm(args: GPTArgs) -> nn.Module:
    if args.norm == "rmsnorm":
        return nn.RMSNorm(args.d_model, eps=1e-5)
    return nn.LayerNorm(args.d_model, bias=args.bias)


def _rope_tables(seq_len: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # [T, hd/2]
    return angles.cos(), angles.sin()


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # "rotate half" (GPT-NeoX) layout: pairs are (i, i + hd/2); x is [B, H, T, hd].
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, args: GPTArgs, n_head: int | None = None):
        super().__init__()
        self.head_dim = args.d_model // args.n_head
        self.dropout = args.dropout
        self.qk_norm = args.qk_norm
        width = (n_head or args.n_head) * self.head_dim  # d_model unless heads were pruned
        # One fused projection: a single matmul, and TP can shard it column-wise.
        self.qkv = nn.Linear(args.d_model, 3 * width, bias=args.bias)
        self.proj = nn.Linear(width, args.d_model, bias=args.bias)
        self.resid_drop = nn.Dropout(args.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """`mask`: None for plain causal attention, else a bool [B, 1, T, T] (True = may attend)."""
        B, T, _ = x.shape
        # qkv rows are laid out head by head ([h0: q k v][h1: q k v]...), so a column-wise
        # tensor-parallel shard of qkv holds whole heads; the head count is inferred (-1) from the
        # local width, so the same code runs on a shard.
        q, k, v = self.qkv(x).view(B, T, -1, 3, self.head_dim).unbind(3)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if self.qk_norm:
            q, k = rms(q), rms(k)
        if rope is not None:
            cos, sin = rope
            if cos.dim() == 2:  # the table; per-token angles ([B, 1, T, hd/2]) come pre-gathered
                cos, sin = cos[:T], sin[:T]
            q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        y = causal_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, mask=mask)
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.resid_drop(self.proj(y))


def rms(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / RMS(x) over the last dimension, without a gain (QK-norm's per-head normalisation)."""
    return F.rms_norm(x, (x.size(-1),), eps=eps)


def relu2(x: torch.Tensor) -> torch.Tensor:
    """ReLU squared (Primer, So et al. 2021; the nanoGPT speedrun's MLP activation)."""
    return F.relu(x).square()


def gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"gelu": gelu, "relu2": relu2}


class FeedForward(nn.Module):
    def __init__(self, args: GPTArgs, d_ff: int | None = None):
        super().__init__()
        d_ff = d_ff or args.d_ff
        self.fc = nn.Linear(args.d_model, d_ff, bias=args.bias)
        self.proj = nn.Linear(d_ff, args.d_model, bias=args.bias)
        self.drop = nn.Dropout(args.dropout)
        self.act = ACTIVATIONS[args.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    def __init__(self, args: GPTArgs, layer: int = 0):
        super().__init__()
        self.norm1 = _make_norm(args)
        self.attn = CausalSelfAttention(args, args.layer_heads[layer] if args.layer_heads else None)
        self.norm2 = _make_norm(args)
        self.mlp = FeedForward(args, args.layer_d_ff[layer] if args.layer_d_ff else None)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, mask)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, args: GPTArgs):
        super().__init__()
        self.args = args
        self.tok_emb = nn.Embedding(args.vocab_size, args.d_model)
        if not args.rope:
            self.pos_emb = nn.Embedding(args.seq_len, args.d_model)
        else:
            cos, sin = _rope_tables(args.seq_len, args.d_model // args.n_head)
            # Non-persistent: derived data, kept out of checkpoints; still follows .to(device).
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(args.dropout)
        self.blocks = nn.ModuleList(Block(args, i) for i in range(args.n_layer))
        self.norm_f = _make_norm(args)
        self.lm_head = nn.Linear(args.d_model, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02); residual output projections scaled by 1/sqrt(2·n_layer)
        so the residual stream variance does not grow with depth."""
        std = 0.02
        resid_std = std / math.sqrt(2 * self.args.n_layer)
        for name, mod in self.named_modules():
            if isinstance(mod, nn.Linear):
                if self.args.tie_embeddings and mod is self.lm_head:
                    continue  # shares tok_emb.weight, initialised as the embedding
                is_resid = name.endswith("attn.proj") or name.endswith("mlp.proj")
                nn.init.normal_(mod.weight, mean=0.0, std=resid_std if is_resid else std)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.Embedding):
                nn.init.normal_(mod.weight, mean=0.0, std=std)
            elif isinstance(mod, (nn.LayerNorm, nn.RMSNorm)):
                mod.reset_parameters()

    def forward(self, idx: torch.Tensor, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V]. `doc_ids` [B, T] (optional): the document of each token in a packed
        sequence; attention then stays inside a document and positions restart at each document's
        first token, so a token's logits are those of its document run alone."""
        B, T = idx.shape
        if T > self.args.seq_len:
            raise ValueError(f"sequence length {T} exceeds model seq_len {self.args.seq_len}")
        x = self.tok_emb(idx)
        mask = pos = None
        if doc_ids is not None:
            mask, pos = document_mask(doc_ids)
        rope = None
        if self.args.rope:
            rope = (self.rope_cos, self.rope_sin)
            if pos is not None:
                rope = (self.rope_cos[pos].unsqueeze(1), self.rope_sin[pos].unsqueeze(1))
        else:
            x = x + self.pos_emb(torch.arange(T, device=idx.device) if pos is None else pos)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope, mask)
        return self.lm_head(self.norm_f(x))

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Trainable-parameter count; tied weights count once (parameters() dedups them).
        exclude_embedding drops tok_emb and pos_emb (and hence a tied head)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding:
            n -= self.tok_emb.weight.numel()
            if not self.args.rope:
                n -= self.pos_emb.weight.numel()
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token at full context (PaLM, appendix B):

            6·N + 12·L·d·T

        N = matmul weights: per layer 4·d² (qkv + proj) + 2·d·d_ff (mlp), plus the LM head
        V·d (a matmul even when its weight is tied to the embedding). Embedding lookups,
        norms, biases and activations are ignored. 12·L·d·T is attention scores + values
        (QKᵀ and AV, 2 matmuls × 2 FLOPs/MAC forward, ×3 with backward) over the *full*
        T×T matrix, i.e. causal masking is not discounted, as in PaLM's MFU convention.
        """
        a = self.args
        hd = a.d_model // a.n_head
        heads = a.layer_heads or [a.n_head] * a.n_layer
        d_ff = a.layer_d_ff or [a.d_ff] * a.n_layer
        # Per layer: qkv + proj are 4·d·(heads·hd) (4·d² unpruned), the MLP 2·d·d_ff.
        n_matmul = sum(4 * a.d_model * h * hd + 2 * a.d_model * f for h, f in zip(heads, d_ff))
        n_matmul += a.vocab_size * a.d_model
        return float(6 * n_matmul + 12 * a.seq_len * sum(h * hd for h in heads))

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Autoregressive sampling within the training context (models/lm.py)."""
        return sample(self, idx, max_new_tokens, context=self.args.seq_len, temperature=temperature, top_k=top_k,
                      generator=generator)

    def args_dict(self) -> dict:
        d = dataclasses.asdict(self.args)
        for key in ("layer_heads", "layer_d_ff"):  # unpruned models keep the original layout
            if d[key] is None:
                del d[key]
        for key, default in _OPTIONAL_DEFAULTS.items():
            if d[key] == default:
                del d[key]
        return d

    @classmethod
    def from_args_dict(cls, d: dict) -> "GPT":
        return cls(args_from_dict(GPTArgs, d, "model"))
