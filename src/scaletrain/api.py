"""The Python API: train your own `nn.Module` on your own data with the same loop, checkpoints,
telemetry and reports as the CLI.

    from scaletrain import Classification, Trainer, load_config
    cfg = load_config("mlp-digits", ["train.run_dir=runs/my-mlp"])
    trainer = Trainer.from_config(cfg, model, Classification(train_set, val_set, seed=cfg.train.seed))
    summary = trainer.fit()
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from scaletrain.config.schema import Config
from scaletrain.train.build import check_device, check_run_dir, default_run_dir
from scaletrain.train.trainer import Trainer


def trainer_for(cfg: Config, model: nn.Module, task, *, model_spec: dict | None = None) -> Trainer:
    """A `Trainer` for a user's model and task; the config's model and data sections are not used."""
    check_device(cfg)
    run_dir = Path(cfg.train.run_dir).expanduser() if cfg.train.run_dir else default_run_dir(cfg)
    check_run_dir(cfg, run_dir)
    return Trainer(cfg, model, task, run_dir=run_dir, model_spec=model_spec)


Trainer.from_config = staticmethod(trainer_for)  # type: ignore[attr-defined]
