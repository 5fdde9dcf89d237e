"""The MLP's arithmetic for `scaletrain plan` (a `ModelSpec`): parameters, FLOPs per sample and
the activation memory of a step (docs/plan.md)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from scaletrain.models.mlp.model import MLP


@dataclass(frozen=True)
class MLPSpec:
    params: int
    matmul_params: int
    flops_per_unit: float
    widths: tuple[int, ...]  # input, hidden..., classes
    dropout: float
    kind: str = "mlp"
    block_params: int = 0  # no repeated blocks: no activation checkpointing, no TP, no pp
    n_layer: int = 0
    tp_params: int = 0
    units_per_sample: int = 1

    @property
    def hidden(self) -> int:
        return max(self.widths)

    def supports_tp(self, tp: int) -> bool:
        return False

    def activation_bytes(self, micro: int, precision: str, ac: bool, tp: int = 1) -> tuple[float, float]:
        """fp32 inputs of every linear and outputs of every activation; the softmax's gradients."""
        w = self.widths
        saved = micro * 4 * (w[0] + sum(2 * h for h in w[1:-1]) + 2 * w[-1])
        return saved, micro * 4 * (2 * max(w) + 2 * w[-1])


def spec(model: MLP) -> MLPSpec:
    a = model.args
    matmul = sum(mod.weight.numel() for mod in model.modules() if isinstance(mod, nn.Linear))
    return MLPSpec(params=sum(p.numel() for p in model.parameters()), matmul_params=matmul,
                   flops_per_unit=model.flops_per_sample(),
                   widths=(a.input_dim, *a.hidden, a.num_classes), dropout=a.dropout)
