"""How the core may split the GPT (the family's `ParallelPlan`): its blocks, its tensor-parallel plan,
its pipeline stages and its tied embedding. This file is the only one outside `model.py` that
names the GPT's sub-modules; `scaletrain.parallel` applies the plan without knowing them.
"""

from __future__ import annotations

import torch
from torch import nn

from scaletrain.errors import UserError
from scaletrain.models.family import ParallelPlan
from scaletrain.models.gpt.model import GPT

# Column-wise: output features split (whole heads / a slice of the MLP's hidden units per rank);
# row-wise: input features split, outputs summed by one all-reduce. One all-reduce per sub-layer
# (Megatron-LM's pairing). The qkv rows are laid out head by head, so a column shard holds whole
# heads and the attention infers its local head count from the shard's width.
TP_PLAN = {
    "attn.qkv": "colwise",
    "attn.proj": "rowwise",
    "mlp.fc": "colwise",
    "mlp.proj": "rowwise",
}


def blocks(model: GPT) -> nn.ModuleList:
    return model.blocks


def check_tp(model: GPT, tp: int) -> None:
    a = model.args
    heads = a.layer_heads or [a.n_head]
    widths = a.layer_d_ff or [a.d_ff]
    if any(h % tp for h in heads) or any(f % tp for f in widths):
        raise UserError(f"parallel.tp_size={tp} must divide model.n_head ({a.n_head}) and the MLP "
                        f"width ({a.d_ff})")


class GPTStage(nn.Module):
    """Layers `layers` of `gpt`, plus the embeddings on the first stage and the head on the last.

    It holds the GPT's own sub-modules under the GPT's names (`tok_emb`, `blocks.3`, `lm_head`), so
    its state dict is a slice of the full model's and checkpoints reshard between layouts."""

    def __init__(self, gpt: GPT, layers: range, first: bool, last: bool):
        super().__init__()
        self.first, self.last, self.rope = first, last, gpt.args.rope
        if first:
            self.tok_emb = gpt.tok_emb
            if not self.rope:
                self.pos_emb = gpt.pos_emb
            self.drop = gpt.drop
        if self.rope:
            self.register_buffer("rope_cos", gpt.rope_cos, persistent=False)
            self.register_buffer("rope_sin", gpt.rope_sin, persistent=False)
        # A ModuleDict keyed "3", "4": the names equal the full model's `blocks.3`, `blocks.4`.
        self.blocks = nn.ModuleDict({str(i): gpt.blocks[i] for i in layers})
        if last:
            self.norm_f = gpt.norm_f
            self.lm_head = gpt.lm_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rope = (self.rope_cos, self.rope_sin) if self.rope else None
        if self.first:
            T = x.shape[1]
            h = self.tok_emb(x)
            if not self.rope:
                h = h + self.pos_emb(torch.arange(T, device=x.device))
            x = self.drop(h)
        for block in self.blocks.values():
            x = block(x, rope)
        if self.last:
            return self.lm_head(self.norm_f(x))
        return x


def tied_parameter(model: GPT) -> nn.Parameter | None:
    return model.lm_head.weight if model.lm_head.weight is model.tok_emb.weight else None


PLAN = ParallelPlan(
    blocks=blocks,
    tp_plan=TP_PLAN,
    check_tp=check_tp,
    pipeline_stage=GPTStage,
    tied_parameter=tied_parameter,
)
