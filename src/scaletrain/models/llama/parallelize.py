"""How the core may split a Llama: blocks, tensor-parallel plan, pipeline stages, tied weights.

Plain modules only; the core (scaletrain.parallel) applies them.
"""

from __future__ import annotations


import torch
from torch import nn

from scaletrain.errors import UserError
from scaletrain.models.family import ParallelPlan, TPStyle

# Megatron's pairs, one all-reduce per sub-layer: wq, wk, wv split by output features (whole heads
# per rank: q and k/v heads split alike, so each rank keeps its query heads' key/value group),
# wo by input features; the SwiGLU's gate and up by hidden unit, its down projection by input.
TP_PLAN: dict[str, TPStyle] = {
    "attention.wq": "colwise",
    "attention.wk": "colwise",
    "attention.wv": "colwise",
    "attention.wo": "rowwise",
    "feed_forward.w1": "colwise",
    "feed_forward.w3": "colwise",
    "feed_forward.w2": "rowwise",
}


def blocks(model: nn.Module) -> nn.ModuleList:
    return model.layers


def check_tp(model: nn.Module, tp: int) -> None:
    a = model.args
    for key, value in (("n_head", a.n_head), ("n_kv_head", a.n_kv_head), ("d_ff", a.d_ff)):
        if value % tp:
            raise UserError(f"parallel.tp_size: {tp} tensor-parallel ranks must divide model.{key} ({value}): "
                            "each rank holds whole heads and an equal share of the MLP")
    if a.qk_norm and tp > 1:
        # q_norm / k_norm weights are shared by all heads: a rank holding half the heads computes
        # half their gradient, and nothing here sums the halves (torchtitan's Qwen3 makes them
        # DTensors with SequenceParallel over the head dim). Refused rather than silently diverging.
        raise UserError(f"model.qk_norm: not supported with tensor parallel (parallel.tp_size {tp}): the "
                        "per-head norm weights would get only each rank's share of their gradient")


class LlamaStage(nn.Module):
    """Layers `layers` of `model` under the full model's names (`layers.3`), plus the embedding on
    the first stage and the final norm and output head on the last: its state dict is a slice of
    the full model's, so checkpoints reshard to and from every other layout.

    Packed documents (`doc_ids`) are not passed between stages: a stage runs plain causal
    attention."""

    def __init__(self, model: nn.Module, layers: range, first: bool, last: bool):
        super().__init__()
        self.first, self.last = first, last
        if first:
            self.tok_embeddings = model.tok_embeddings
            self.drop = model.drop
        # A ModuleDict keyed "3", "4": the names equal the full model's `layers.3`, `layers.4`.
        self.layers = nn.ModuleDict({str(i): model.layers[i] for i in layers})
        if last:
            self.norm = model.norm
            self.output = model.output
        self.register_buffer("freqs_cos", model.freqs_cos, persistent=False)
        self.register_buffer("freqs_sin", model.freqs_sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            x = self.drop(self.tok_embeddings(x))
        T = x.shape[1]
        rope = (self.freqs_cos[:T].unsqueeze(1), self.freqs_sin[:T].unsqueeze(1))
        for layer in self.layers.values():
            x = layer(x, rope)
        if self.last:
            return self.output(self.norm(x))
        return x


def tied_parameter(model: nn.Module) -> nn.Parameter | None:
    weight = model.output.weight
    return weight if weight is model.tok_embeddings.weight else None


PLAN = ParallelPlan(blocks=blocks, tp_plan=TP_PLAN, check_tp=check_tp, pipeline_stage=LlamaStage,
                    tied_parameter=tied_parameter)
