"""Rotary position embeddings as Meta's Llama 3 applies them, with Llama 3.1's frequency scaling.

Layout: Meta's (and torchtitan's) interleaved pairs — dimensions (2i, 2i+1) of a head rotate
together by angle `position x inv_freq[i]`, the real form of `precompute_freqs_cis` +
`apply_rotary_emb` (complex numbers). Hugging Face checkpoints use the "rotate half" layout
(pairs (i, i + head_dim/2)); converting weights between the two permutes the rows of wq and wk
(`convert_llama_weights_to_hf.py`'s `permute`), nothing here changes.

Real cos/sin tables instead of complex ones: the same numbers, and they survive `torch.compile`,
DTensor and bf16 autocast without complex support.
"""

from __future__ import annotations

import math

import torch


def inv_frequencies(head_dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """[head_dim/2] angular frequency of each rotated pair (fp32), Llama 3.1-scaled if `scaling`.

    `scaling` {factor, low_freq_factor, high_freq_factor, original_max_position_embeddings}: the
    long-context rule of Llama 3.1 (Meta's `apply_scaling`, HF's `_compute_llama3_parameters`).
    Pairs whose wavelength is shorter than original/high_freq_factor keep their frequency (they
    resolve local order); those longer than original/low_freq_factor are slowed by `factor` (so
    `factor` x the original context fits in one turn); the band between is interpolated linearly
    in original/wavelength.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if not scaling:
        return inv_freq
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)
    medium = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, medium)
    return torch.where(wavelen < old_len / high, inv_freq, scaled)


def rope_tables(seq_len: int, head_dim: int, theta: float, scaling: dict | None = None,
                device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [seq_len, head_dim/2] fp32: the angle of pair i at position t."""
    inv_freq = inv_frequencies(head_dim, theta, scaling).to(device)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, T, heads, head_dim] by position; cos/sin broadcast to [B or 1, T, 1, head_dim/2].

    Computed in fp32 and cast back, as Meta's `apply_rotary_emb` does (`xq.float()` ... `type_as`):
    a bf16 rotation would lose position precision at long context.
    """
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # pair (2i, 2i+1) = real, imaginary part
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
    return out.type_as(x)
