"""Multi-layer perceptron classifier: the small model for tabular / image-as-vector demos."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from scaletrain.errors import UserError
from scaletrain.models.args import args_from_dict


@dataclass
class MLPArgs:
    input_dim: int
    num_classes: int
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.0
    input_dropout: float = 0.0  # dropout on the input features (pixels), before the first layer

    def __post_init__(self) -> None:
        # JSON/YAML give lists; a tuple keeps the dataclass hashable and args_dict stable.
        self.hidden = tuple(self.hidden)
        for key in ("input_dim", "num_classes"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"model.{key} must be a positive integer, got {value!r}")
        if any(not isinstance(h, int) or isinstance(h, bool) or h <= 0 for h in self.hidden):
            raise UserError(f"model.hidden must be positive integers, got {list(self.hidden)!r}")
        for key in ("dropout", "input_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise UserError(f"model.{key} must be in [0, 1), got {getattr(self, key)!r}")


class MLP(nn.Module):
    def __init__(self, args: MLPArgs):
        super().__init__()
        self.args = args
        # Outside `net`, so that the linear layers keep their names (net.0, net.2, ...) either way.
        self.input_drop = nn.Dropout(args.input_dropout) if args.input_dropout > 0 else nn.Identity()
        layers: list[nn.Module] = []
        width = args.input_dim
        for h in args.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if args.dropout > 0:
                layers.append(nn.Dropout(args.dropout))
            width = h
        layers.append(nn.Linear(width, args.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # [B, H, W] images become [B, H*W]
        if x.shape[1] != self.args.input_dim:
            raise ValueError(f"input has {x.shape[1]} features per sample, model expects {self.args.input_dim}")
        return self.net(self.input_drop(x))

    def _linears(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_sample(self) -> float:
        """Training FLOPs per sample: 6 · Σ in·out (2 FLOPs/MAC forward, 4 backward for the
        input and weight gradients); biases and activations are negligible and ignored."""
        return float(6 * sum(m.in_features * m.out_features for m in self._linears()))

    def args_dict(self) -> dict:
        d = dataclasses.asdict(self.args)
        d["hidden"] = list(d["hidden"])  # JSON has no tuples; round-trips via __post_init__
        if not d["input_dropout"]:  # the description of a model made before the key existed
            del d["input_dropout"]
        return d

    @classmethod
    def from_args_dict(cls, d: dict) -> "MLP":
        return cls(args_from_dict(MLPArgs, d, "model"))
