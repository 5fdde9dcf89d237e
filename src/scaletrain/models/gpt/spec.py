"""The GPT's arithmetic for `scaletrain plan` (a `ModelSpec`): parameters, FLOPs per token and the
activation memory of a step, counted tensor by tensor (docs/plan.md derives each term and reports
how close it comes to measured peaks)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from scaletrain.models.gpt.model import GPT
from scaletrain.models.gpt.parallelize import TP_PLAN

# Rotary blocks hold ~5d per token more than the rotated q, k counted below: measured on the grid
# of docs/plan.md (learned positions match the count within 1-3 %).
ROPE_EXTRA_D = 5


@dataclass(frozen=True)
class GPTSpec:
    params: int
    block_params: int
    tp_params: int
    matmul_params: int
    flops_per_unit: float
    units_per_sample: int  # seq_len
    n_layer: int
    hidden: int  # d_model
    n_head: int
    d_ff: int
    vocab: int
    rope: bool
    dropout: float
    kind: str = "gpt"

    @property
    def attention_shape(self) -> tuple[int, int, int]:  # the blocks call models.attention.causal_attention
        return self.n_head, self.n_head, self.hidden // self.n_head

    def supports_tp(self, tp: int) -> bool:
        return self.n_head % tp == 0 and self.d_ff % tp == 0

    def activation_bytes(self, micro: int, precision: str, ac: bool, tp: int = 1) -> tuple[float, float]:
        """(saved for backward, transient peak on top of it) for one micro-batch, bytes per rank.

        Per token and block, fp32: norm1 out d, qkv 3d, attention out d, its contiguous copy d,
        residual d, norm2 out d, fc out 4d, gelu out 4d, block output d = 17d (rotary q, k: +2d; a
        d_ff other than 4d changes the 8d). The loss head keeps log-softmax (V) and, in backward,
        two more V-sized gradients live at once.
        """
        m, d, ff, V = micro * self.units_per_sample, self.hidden, self.d_ff, self.vocab
        sharded = 3 * d + d + d + 2 * ff + (2 * d if self.rope else 0)  # split over tp ranks
        # norm1 out, residual, norm2 out, block output; with rotary positions + ROPE_EXTRA_D
        full = d + d + d + d + (ROPE_EXTRA_D * d if self.rope else 0)
        if precision == "bf16":  # linear inputs/outputs in bf16, residual stream and norms in fp32
            # bf16: the sharded tensors, the norms' outputs cast for their linears and the proj
            # input copy (2 bytes); fp32: the residual and the block output (norms run in fp32)
            per_block = m * (2 * sharded / tp + 2 * 3 * d + 4 * 2 * d)
            head_saved, head_peak = m * 4 * V, m * 10 * V
            weights = 2 * self.matmul_params / tp  # autocast's bf16 weight copies, saved by each linear
        else:
            per_block = m * 4 * (sharded / tp + full)
            head_saved, head_peak = m * 4 * V, m * 4 * 2 * V
            weights = 0.0
        if self.dropout > 0:  # masks (1 byte) and outputs; attention dropout leaves the flash kernel
            per_block += m * 3 * 5 * d + micro * (self.n_head / tp) * self.units_per_sample ** 2 * 5
        embed = m * 4 * d * (1 if self.rope else 2)
        backward = m * 4 * (2 * ff + 3 * d) / tp  # gradients of the MLP's hidden and the q, k, v in flight
        if ac:  # each block keeps only its input; one block is recomputed at a time in backward
            saved = embed + self.n_layer * m * 4 * d + m * 4 * d + head_saved + weights
            return saved, head_peak + per_block + backward
        return embed + self.n_layer * per_block + m * 4 * d + head_saved + weights, head_peak + backward


def spec(model: GPT) -> GPTSpec:
    """The spec of a GPT instance (a meta-device one will do: only shapes are read)."""
    a = model.args
    block = model.blocks[0]
    tp_params = sum(block.get_submodule(name).weight.numel() for name in TP_PLAN) * a.n_layer
    matmul = sum(mod.weight.numel() for mod in model.modules() if isinstance(mod, nn.Linear))
    return GPTSpec(
        params=sum(p.numel() for p in model.parameters()),
        block_params=sum(p.numel() for p in block.parameters()),
        tp_params=tp_params, matmul_params=matmul, flops_per_unit=model.flops_per_token(),
        units_per_sample=a.seq_len, n_layer=a.n_layer, hidden=a.d_model, n_head=a.n_head, d_ff=a.d_ff,
        vocab=a.vocab_size, rope=a.rope, dropout=a.dropout)

