"""Copies of the trained weights kept beside them: the best evaluation's (early stopping restores
them at the end) and an exponential moving average (`train.ema_decay`, saved as model_ema.safetensors).

A copy has the layout of the parameters it shadows (a DTensor shard under fsdp/tp, a pipeline
stage's parameters under pp), so it costs each rank one more copy of what it holds, is updated
without communication, and is saved in the checkpoints beside the model (groups `best.` and `ema.`)
in the same resharding format: a resume continues it exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from scaletrain.parallel.state import param_names


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def trained_params(module: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters the optimizer updates, by the names the checkpoints use."""
    return {name: p for p, name in param_names(module).items() if p.requires_grad}


class Shadow:
    """A copy of `params` (name -> parameter) that can be refreshed from them or put back into them."""

    def __init__(self, params: dict[str, torch.Tensor]):
        self.params = params
        with torch.no_grad():
            self.tensors = {name: p.detach().clone() for name, p in params.items()}

    def _pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        names = list(self.params)
        return [_local(self.tensors[n]) for n in names], [_local(self.params[n].detach()) for n in names]

    @torch.no_grad()
    def copy_from_params(self) -> None:
        mine, theirs = self._pairs()
        torch._foreach_copy_(mine, theirs)

    @torch.no_grad()
    def copy_into_params(self) -> None:
        mine, theirs = self._pairs()
        torch._foreach_copy_(theirs, mine)


class EMA(Shadow):
    """ema = d * ema + (1 - d) * w after every applied update, with d = min(decay, (1 + t) / (10 + t))
    at update t (counted from 1): the first updates move it quickly off the initial weights, as
    TensorFlow's ExponentialMovingAverage with num_updates does. `t` is the optimizer step, so a
    resume continues the same sequence."""

    def __init__(self, params: dict[str, torch.Tensor], decay: float):
        super().__init__(params)
        self.decay = decay

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        mine, theirs = self._pairs()
        torch._foreach_lerp_(mine, theirs, 1.0 - self.decay_at(step))


class Swapped:
    """`with Swapped(shadow):` the parameters hold the shadow's values inside the block and their
    own again after it (one more copy of the weights for the duration)."""

    def __init__(self, shadow: Shadow):
        self.shadow = shadow
        self.saved: Shadow | None = None

    def __enter__(self) -> Shadow:
        self.saved = Shadow(self.shadow.params)
        self.shadow.copy_into_params()
        return self.shadow

    def __exit__(self, *exc) -> None:
        self.saved.copy_into_params()
        self.saved = None


class Shadows:
    """The trainer's copies: `ema` (train.ema_decay) and `best` (train.early_stopping: the weights
    of the best evaluation so far). The trainer calls these at its loop edges."""

    def __init__(self, params: dict[str, torch.Tensor], *, ema_decay: float | None, keep_best: bool):
        self.params = params
        self.ema = EMA(params, ema_decay) if ema_decay else None
        self.keep_best = keep_best
        self.best: Shadow | None = None

    def after_step(self, step: int) -> None:
        """After an applied update (a skipped one changes no weight, so the average skips it too)."""
        if self.ema is not None:
            self.ema.update(step)

    def after_improvement(self) -> None:
        """An evaluation better than every one before: keep these weights."""
        if not self.keep_best:
            return
        if self.best is None:
            self.best = Shadow(self.params)
        else:
            self.best.copy_from_params()

    def restore_best(self) -> None:
        self.best.copy_into_params()

    def groups(self) -> dict[str, dict[str, torch.Tensor]]:
        """What a checkpoint saves beside the model."""
        out = {}
        if self.ema is not None:
            out["ema"] = self.ema.tensors
        if self.best is not None:
            out["best"] = self.best.tensors
        return out

    def load_groups(self) -> dict[str, dict[str, torch.Tensor]]:
        """Tensors a checkpoint's groups are loaded into (then `loaded` with what it had)."""
        out = {}
        if self.ema is not None:
            out["ema"] = self.ema.tensors
        if self.keep_best:
            self._candidate = Shadow(self.params)
            out["best"] = self._candidate.tensors
        return out

    def loaded(self, groups: dict) -> str | None:
        """After a checkpoint load into `load_groups()`: keep the best weights it had; an EMA it
        lacks (a run that turned train.ema_decay on) starts from the loaded weights. A message
        for the log, or None."""
        if self.keep_best:
            self.best = self._candidate if "best" in groups else None
            self._candidate = None
        if self.ema is not None and "ema" not in groups:
            self.ema.copy_from_params()
            return "the checkpoint holds no EMA of the weights (train.ema_decay was off): it starts from the resumed weights"
        return None
