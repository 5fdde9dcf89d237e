"""Model compression: quantize, prune, distill, low-rank, export, with one report.

    from scaletrain.compress import compress
    summary = compress("runs/gpt-...", "prune-structured", "runs/gpt-pruned", amount=0.5, finetune_steps=200)

The same as `scaletrain compress RUN --method M`. Building blocks are pure functions:
`quantize_int8`, `magnitude_prune`, `prune_structured`, `factorize`, `kd_loss`, `export_onnx`.
Names are imported on first use, so the CLI can list the methods without importing torch.
"""
from importlib import import_module

from scaletrain.compress.names import METHODS

_WHERE = {
    "compress": "run", "Options": "run",
    "DistillationTask": "distill", "kd_loss": "distill",
    "load_model_dir": "load", "load_runtime": "load", "load_source": "load",
    "factorize": "lowrank", "magnitude_prune": "prune", "quantize_int8": "quantize",
    "prune_structured": "structured", "export_onnx": "export",
}

__all__ = ["METHODS", *_WHERE]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"scaletrain.compress.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'scaletrain.compress' has no attribute {name!r}")
