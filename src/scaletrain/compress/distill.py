"""Knowledge distillation: a student learns from the teacher's logits and the true labels.

    loss = alpha · T² · KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) · CE(z_s, y)

(Hinton et al., 2015; the T² keeps the soft term's gradient scale independent of T). It is a pure
function; `DistillationTask` wraps the run's own task so the ordinary trainer trains the student:
its batches carry the teacher's logits next to the labels, in one tensor, because the trainer
passes the loss only (logits, y).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scaletrain.train.step import forward, to_device


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
            temperature: float, alpha: float) -> torch.Tensor:
    """Mean over positions of the soft (KL at temperature T) and hard (cross-entropy) losses.
    Logits are [..., classes]; labels [...]."""
    s = student_logits.flatten(0, -2).float()
    t = teacher_logits.flatten(0, -2).float()
    soft = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                    log_target=True, reduction="batchmean") * temperature**2
    hard = F.cross_entropy(s, labels.flatten())
    return alpha * soft + (1.0 - alpha) * hard


class DistillationTask:
    """The base task with the teacher's logits packed into the targets: y' = [teacher logits, label]
    along the last axis (labels are class / token ids < 2²⁴, exact in fp32). The teacher runs on
    `device`, the student's: its logits are made where the loss needs them."""

    def __init__(self, base, teacher: nn.Module, *, temperature: float = 2.0, alpha: float = 0.5,
                 device: torch.device = torch.device("cpu")):
        self.base, self.teacher, self.device = base, teacher.eval(), device
        self.temperature, self.alpha = temperature, alpha
        self.unit = base.unit

    @property
    def num_train_samples(self) -> int:
        return self.base.num_train_samples

    def train_batch(self, position: int, batch_size: int):
        x, y = self.base.train_batch(position, batch_size)
        with torch.no_grad():  # the trainer prefetches in a thread: no_grad is per thread, set it here
            logits = forward(self.teacher, to_device(x, self.device)).float()
        return x, torch.cat([logits, y.to(logits.device, logits.dtype).unsqueeze(-1)], dim=-1)

    def units(self, x) -> int:
        return self.base.units(x)

    def loss(self, logits: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        teacher, labels = packed[..., :-1], packed[..., -1].long()
        return kd_loss(logits, teacher, labels, temperature=self.temperature, alpha=self.alpha)

    def evaluate(self, model: nn.Module, **kwargs) -> dict[str, float]:
        return self.base.evaluate(model, **kwargs)  # judged on the true labels only

    def __getattr__(self, name: str):  # data_state, check_data_state, sample_ids: the base's
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)


def student_spec(teacher_spec: dict, overrides: dict) -> dict:
    """The teacher's model_config.json with the student's args changed (e.g. d_model, n_layer,
    hidden); per-block widths of a pruned teacher do not carry over."""
    args = {k: v for k, v in teacher_spec["args"].items() if k not in ("layer_heads", "layer_d_ff")}
    return {"name": teacher_spec["name"], "args": {**args, **overrides}}


def default_student(teacher_spec: dict) -> dict:
    """About a quarter of the teacher's parameters: a GPT with half the width (3/4 of the
    layers), an MLP with hidden layers of 0.35x the width."""
    a = teacher_spec["args"]
    if teacher_spec["name"] == "gpt":
        d = a["d_model"] // 2
        heads = a["n_head"]
        while d % heads or (a.get("rope") and (d // heads) % 2):
            heads -= 1
        return {"d_model": d, "n_head": heads, "n_layer": max(1, (3 * a["n_layer"]) // 4), "d_ff": None}
    return {"hidden": [max(1, round(0.35 * h)) for h in a["hidden"]]}
