"""scaletrain: train large models with torch.distributed, from raw data to a deployable model."""

__version__ = "0.1.0"

from scaletrain import noise as _noise  # noqa: E402  (stdlib only: keeps other libraries' known noise quiet)

_noise.install()

# Exported lazily so that `scaletrain --help` and bad-input errors answer without importing torch.
_EXPORTS = {
    "CausalLanguageModeling": "scaletrain.train.tasks",
    "Classification": "scaletrain.train.tasks",
    "LanguageModeling": "scaletrain.train.tasks",
    "Task": "scaletrain.train.tasks",
    "Trainer": "scaletrain.api",
    "trainer_for": "scaletrain.api",
    "Config": "scaletrain.config.schema",
    "load_config": "scaletrain.config.load",
    "UserError": "scaletrain.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scaletrain' has no attribute {name!r}")
