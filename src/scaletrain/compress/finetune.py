"""Short training runs for compressed models, through the ordinary trainer.

A fine-tune (recovery after pruning or factorization) and a distillation are both `Trainer.fit`
on the source run's config with a few settings changed: one process on `device` (see
`training_device`), the given step count, no intermediate evaluations or checkpoints, a warm-up
that fits the run. The trainer writes its own run folder (metrics, loss curve) under the compressed
folder, e.g. `OUT/finetune/`. The trained model comes back on the CPU, where compress evaluates
and times every model.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def training_device(cfg, device: str | None = None) -> torch.device:
    """Where compress trains: `device` (`--device`) when given, else the run's `train.device`, else
    CUDA when available. The run's `cuda` on a machine without one falls back to the CPU (the run
    may have been trained elsewhere); an explicit `--device cuda` there is an error."""
    from scaletrain.errors import UserError

    if device is not None:
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available here (use --device cpu)")
        return torch.device(device)
    if cfg.train.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def train_config(cfg, steps: int, run_dir: Path, lr: float | None = None, seed: int | None = None,
                 device: torch.device = torch.device("cpu")):
    c = cfg.model_copy(deep=True)
    c.train.max_steps = steps
    c.train.run_dir = str(run_dir)
    c.train.resume = False
    c.train.eval_every = 0
    # The trainer's own final evaluation only fills its sub-run summary; compress judges every model
    # itself on the same batches, so keep this one short (0 would mean the whole split).
    c.train.eval_batches = 2
    c.train.final_eval_batches = 2
    c.train.checkpoint_every = 0
    c.train.early_stopping = False
    c.train.max_minutes = None
    # A fixed number of steps: the run's time budget (the `gpt` preset's schedule.budget=time) would
    # fit the schedule to a number of minutes that a fine-tune does not have.
    c.schedule.budget = "steps"
    c.train.device = device.type
    if seed is not None:
        c.train.seed = seed
    c.schedule.warmup_steps = min(c.schedule.warmup_steps, steps // 10)
    c.parallel.strategy = "single"
    c.parallel.nproc = 1
    c.log.progress = False
    c.log.sample_tokens = 0
    c.log.trackers = []
    if lr is not None:
        c.optim.lr = lr
    return c


def train(model: nn.Module, cfg, task, steps: int, run_dir: Path, spec: dict, *, lr: float | None = None,
          seed: int | None = None, device: torch.device = torch.device("cpu")) -> dict:
    """Train `model` in place for `steps` optimizer steps on `device`; the trainer's summary. The
    model is on the CPU again afterwards."""
    from scaletrain.train.trainer import Trainer

    c = train_config(cfg, steps, run_dir, lr=lr, seed=seed, device=device)
    threads = torch.get_num_threads()
    model.train()
    trainer = Trainer.from_config(c, model, task, model_spec=spec)
    try:
        summary = trainer.fit()
    finally:
        torch.set_num_threads(threads)  # the run's train.threads must not leak into the latency runs
        model.to("cpu")
    model.eval()
    return summary
