"""The guard's judgement of one step: is its loss or gradient bad enough to drop the update?

A NaN/Inf loss or gradient norm is always bad; with `guard.spike_factor` a loss above that factor
times the recent mean (an exponential average of the good steps, after 5 of them) is bad too. On
several ranks the verdict is shared: gradients are synchronized, so one rank's bad step poisons
everyone's update. What to do about a bad step (skip, roll back, stop) is the trainer's part.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from scaletrain.config.schema import GuardConfig
from scaletrain.parallel.dist import collective_device


class Guard:
    def __init__(self, cfg: GuardConfig, distributed: bool):
        self.cfg, self.distributed = cfg, distributed
        self.recent_mean: float | None = None
        self.good_steps = 0
        self.bad_in_a_row = 0
        self._last = math.nan  # the loss of the step judged last, for the spike check's mean
        # Without a spike check only the NaN/Inf flag is read: the loss only when the flag is set.
        self._flag_only = not cfg.spike_factor

    def verdict(self, loss: torch.Tensor, grad_norm: torch.Tensor | None,
                nonfinite: torch.Tensor | None = None) -> str | None:
        """Why this step is bad, or None. The guard's one host sync per step.

        `grad_norm` when the step computed one (clipping, a logging step); otherwise `nonfinite`,
        a flag > 0 when the loss or some gradient is NaN/Inf (one fused pass, cheaper than a norm;
        see train.step). With the flag and no spike check, the flag is the only value read."""
        if nonfinite is not None and self._flag_only:
            # The common step, kept short (1 ms steps: the MLP preset): no loss read unless bad.
            reason = None if float(nonfinite) == 0 else self._judge(loss, grad_norm, nonfinite)
            if not self.distributed:
                return reason
        else:
            reason = self._judge(loss, grad_norm, nonfinite)
        if self.distributed:
            flag = torch.tensor([1.0 if reason else 0.0], device=collective_device())  # NCCL: on the GPU
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() and reason is None:
                reason = "another rank's loss or gradient was bad"
        return reason

    def _judge(self, loss: torch.Tensor, grad_norm: torch.Tensor | None,
               nonfinite: torch.Tensor | None) -> str | None:
        """This rank's verdict; remembers the loss it read (`_last`) for `good`."""
        value = self._last = float(loss)
        if not math.isfinite(value):
            return f"loss is {value}"
        if grad_norm is not None and not math.isfinite(float(grad_norm)):
            return f"gradient norm is {float(grad_norm)}"
        if nonfinite is not None and float(nonfinite) > 0:
            return "a gradient is NaN or Inf"
        if (self.cfg.spike_factor and self.recent_mean is not None and self.good_steps >= 5
                and value > self.cfg.spike_factor * self.recent_mean):
            return f"loss spiked to {value:.4g} (recent mean {self.recent_mean:.4g})"
        return None

    def good(self) -> None:
        """The step that was judged last went through."""
        self.good_steps += 1
        self.bad_in_a_row = 0
        if self._flag_only:  # no spike check: the mean is only its
            return
        m = self.recent_mean
        self.recent_mean = self._last if m is None else 0.9 * m + 0.1 * self._last

    def bad(self) -> bool:
        """Count a dropped step; True when there have been more in a row than allowed."""
        self.bad_in_a_row += 1
        return self.bad_in_a_row > self.cfg.max_consecutive
