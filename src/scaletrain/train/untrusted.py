"""Reading checkpoint files without running code that a planted pickle carries.

A checkpoint folder may come from anywhere (a shared disk, a download), and its checksums prove
only that the files are the ones written next to them, not who wrote them. Three of its files are
pickles: DCP's `.metadata`, DCP's non-tensor items (the optimizer's param_groups, read by DCP's
default planner with `torch.load(weights_only=False)`), and `rng.pt`. Each is first read by an
unpickler that only builds plain data and a short list of known classes; anything else (a
`__reduce__` calling `os.system`, `open`, ...) is refused before it can run.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

from scaletrain.errors import UserError

# (module, name) pairs DCP's metadata pickles reference besides its own classes (torch 2.4-2.13).
_METADATA_GLOBALS = {
    ("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"), ("builtins", "set"), ("builtins", "frozenset"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        # A dotted name would reach through a module's attributes (`filesystem.os.system`).
        if "." not in name:
            if (module, name) in _METADATA_GLOBALS:
                return super().find_class(module, name)
            if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
                return getattr(torch, name)
            if module.startswith("torch.distributed.checkpoint."):
                obj = super().find_class(module, name)
                if isinstance(obj, type) and obj.__module__.startswith("torch.distributed.checkpoint."):
                    return obj
        raise pickle.UnpicklingError(f"global {module}.{name} is not checkpoint metadata")


def check_metadata(path: Path) -> str | None:
    """None if DCP's `.metadata` at `path` holds only checkpoint metadata, else why it is refused."""
    try:
        with open(path, "rb") as fh:
            _MetadataUnpickler(fh).load()
    except pickle.UnpicklingError as exc:
        return f"refused: {exc} (a pickle that would run code; not loaded)"
    except Exception as exc:  # truncated or garbage: not a pickle this reader can build
        return f"unreadable ({type(exc).__name__}: {exc})"
    return None


def check_torch_file(path: Path) -> str | None:
    """None if `torch.load(weights_only=True)` accepts the file, else why it is refused."""
    try:
        torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), "not plain data")
        return f"refused: {reason} (a pickle that would run code; not loaded)"
    except Exception as exc:
        return f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return None


class PlainDataLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, except that a non-tensor item must load with weights_only=True
    before DCP's own loader sees it. `refused` holds the reason when one did not."""

    refused: str | None = None

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            torch.load(value, weights_only=True)
        except pickle.UnpicklingError as exc:
            reason = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), "not plain data")
            self.refused = f"item {read_item.dest_index.fqn}: {reason}"
            raise UserError(self.refused) from None
        value.seek(0)
        super().load_bytes(read_item, value)
