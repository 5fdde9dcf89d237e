"""Optional dependencies: a command that needs one imports it through `require`, so a missing
package is one `error:` line naming the extra to install, not an ImportError traceback.

The extras (pyproject.toml): compress (torchao, onnx, onnxscript, onnxruntime), bnb (bitsandbytes),
parquet (pyarrow), hf (transformers, peft), ray (ray[data]), trackers (mlflow, wandb, trackio),
test, bench, and all. A config that names a missing one is refused when it is read (`check`), before
any work starts, without importing the package.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from scaletrain.errors import UserError


def _message(missing: str, extra: str, what: str) -> str:
    return f"{what} needs the package {missing!r}, which is not installed: pip install 'scaletrain[{extra}]'"


def require(module: str, extra: str, what: str) -> ModuleType:
    """`import module`, or UserError: `<what> needs <package>: pip install 'scaletrain[<extra>]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = (exc.name or module).split(".")[0]
        raise UserError(_message(missing, extra, what)) from None


def missing(module: str, extra: str, what: str) -> str | None:
    """The `require` message when the top-level package of `module` is not installed, else None;
    looks for it without importing it (cheap enough for config validation)."""
    top = module.split(".")[0]
    try:
        found = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):  # a finder that refuses it, a broken __spec__
        found = False
    return None if found else _message(top, extra, what)
