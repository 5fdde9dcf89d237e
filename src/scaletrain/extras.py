"""Optional dependencies: a command that needs one imports it through `require`, so a missing
package is one `error:` line naming the extra to install, not an ImportError traceback."""

from __future__ import annotations

import importlib
from types import ModuleType

from scaletrain.errors import UserError


def require(module: str, extra: str, what: str) -> ModuleType:
    """`import module`, or UserError: `<what> needs <package>: pip install 'scaletrain[<extra>]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = (exc.name or module).split(".")[0]
        raise UserError(f"{what} needs the package {missing!r}, which is not installed: "
                        f"pip install 'scaletrain[{extra}]'") from None
