"""Causal self-attention for every model family: SDPA's kernels, except where an explicit
matmul-softmax-matmul is measured faster (bf16 on the CPU, sequences up to EXPLICIT_MAX_T).

Why the exception: SDPA's CPU flash kernel runs no faster in bf16 than in fp32, while the CPU's
bf16 matmuls (AVX512-BF16, AMX) are several times faster than its fp32 ones, so at short sequences
the written-out form is faster forward + backward, and so is the `gpt` preset's whole bf16 step
(`benchmarks/attention.py` measures both side by side: docs/performance.md, "Attention on the CPU
in bf16"). It keeps the T x T probabilities for backward (batch x heads x T² x 2 bytes a layer),
and from about 1,024 tokens on the flash kernel is faster again: hence EXPLICIT_MAX_T. In fp32, on
GPUs, with attention dropout or a document mask, SDPA runs as before.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

EXPLICIT_MAX_T = 512


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, dropout_p: float = 0.0,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ / √hd + causal) v for q [B, H, T, hd] and k, v [B, K, T, hd] (K divides H:
    query head h reads key/value head h // (H / K), as SDPA's enable_gqa). `mask`: None for plain
    causal attention, else a bool [B, 1, T, T] (True = may attend)."""
    if mask is None and explicit_attention(q, k, dropout_p):
        return _explicit_causal(*(t.to(torch.bfloat16) for t in (q, k, v)))  # as SDPA's autocast casts them
    gqa = {"enable_gqa": True} if q.shape[1] != k.shape[1] else {}  # passed only when needed (ONNX export)
    if mask is None:  # SDPA's own causal kernel, no mask tensor
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, **gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, **gqa)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, dropout_p: float = 0.0) -> bool:
    """Whether causal_attention writes the attention out instead of calling SDPA (see the module
    docstring): plain tensors on the CPU in bf16 (or in fp32 under bf16 autocast, which casts
    SDPA's inputs: QK-norm's outputs are fp32), self-attention of up to EXPLICIT_MAX_T tokens, no
    dropout."""
    bf16 = q.dtype == torch.bfloat16 or (q.dtype == torch.float32 and torch.is_autocast_enabled("cpu")
                                         and torch.get_autocast_dtype("cpu") == torch.bfloat16)
    return (bf16 and q.device.type == "cpu" and type(q) is torch.Tensor and dropout_p == 0.0
            and q.shape[-2] == k.shape[-2] <= EXPLICIT_MAX_T)


def explicit_attention_bytes(batch: int, T: int, heads: float, kv_heads: float, head_dim: int) -> float:
    """Bytes the written-out form keeps for backward beyond what SDPA's kernel keeps, one layer
    (for `scaletrain plan`): + the bf16 probabilities (batch x heads x T²) and, under grouped-query
    attention, the key/value heads repeated to the query heads; - SDPA's fp32 log-sum-exp, which it
    does not keep. (SDPA's output is kept either way: it is the storage of the output projection's
    input.) 0 above EXPLICIT_MAX_T, where SDPA runs."""
    if T > EXPLICIT_MAX_T:
        return 0.0
    n = batch * T
    return n * heads * (2.0 * T - 4) + 2 * n * (heads - kv_heads) * head_dim * 2


def _explicit_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if k.shape[1] != q.shape[1]:
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    T, hd = q.shape[-2], q.shape[-1]
    # The scale on q (T x hd) rather than on the scores (T x T); the mask as an additive bias.
    scores = (q * hd**-0.5) @ k.transpose(-1, -2) + _causal_bias(T, q.dtype, q.device)
    return scores.softmax(dim=-1) @ v


@functools.lru_cache(maxsize=8)
def _causal_bias(T: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """0 where a query may attend (key position <= query position), -inf above the diagonal."""
    upper = torch.ones(T, T, dtype=torch.bool, device=device).triu(1)
    return torch.zeros(T, T, dtype=dtype, device=device).masked_fill(upper, float("-inf"))
