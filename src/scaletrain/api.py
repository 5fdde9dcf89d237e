"""The Python API: train your own `nn.Module` on your own data with the same loop, checkpoints,
telemetry and reports as the CLI.

    from scaletrain import Classification, Trainer, load_config
    cfg = load_config("mlp-digits", ["train.run_dir=runs/my-mlp"])
    trainer = Trainer.from_config(cfg, model, Classification(train_set, val_set, seed=cfg.train.seed))
    summary = trainer.fit()
"""

from scaletrain.train.trainer import Trainer

trainer_for = Trainer.from_config  # the same, as a function

__all__ = ["Trainer", "trainer_for"]
