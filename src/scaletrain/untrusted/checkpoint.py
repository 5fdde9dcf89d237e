"""DCP checkpoints from outside, loaded without unpickling anything but plain data.

`dcp.load` with its defaults does two unsafe things with a folder it is given: it reads `.metadata`
with a full `pickle.load`, and it reads every item the metadata declares as "bytes" with
`torch.load(weights_only=False)` — whatever the model expected there. A planted folder therefore
runs code through either file (the checksums do not help: the planter rewrites them).

`load_dcp` replaces both: `SafeReader` reads the metadata through `pickles.read_metadata` (an
explicit list of classes, every field checked, every data file inside the folder), and
`PlainDataPlanner` refuses a bytes entry wherever the destination holds a tensor (all of a model's
state), or anywhere when `allow_bytes` is off, and reads the others (an optimizer's param_groups:
numbers, strings, booleans) with torch's weights-only unpickler. Before any data is read,
`check_matches` compares the checkpoint's keys and shapes with the destination's, so that another
model's checkpoint is refused naming the keys that differ.
"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, StorageMeta
from torch.distributed.checkpoint._traverse import set_element

from scaletrain.errors import RunFailure, UserError
from scaletrain.untrusted.pickles import check_plain, load_weights_only, read_metadata


class SafeReader(FileSystemReader):
    """DCP's file reader, except that the metadata is read and checked by `read_metadata`, and
    data that does not decode (a byte range that lies, a corrupted file) is a damaged checkpoint:
    bad input, not a crash."""

    def read_data(self, plan, planner):
        try:
            return super().read_data(plan, planner)
        except (UserError, OSError, MemoryError):
            raise
        except (RuntimeError, ValueError, AssertionError, EOFError, pickle.UnpicklingError) as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            raise UserError(f"checkpoint {self.path}: its data does not decode ({type(exc).__name__}: "
                            f"{lines[0][:200] if lines else ''}); the checkpoint is damaged") from None

    def read_metadata(self, *args, **kwargs) -> Metadata:
        if kwargs.get("rank") is not None:  # per-rank metadata files: never written by scaletrain
            raise UserError(f"{self.path}: per-rank metadata files are not supported")
        md = read_metadata(Path(self.path) / ".metadata")
        if md.storage_meta is None:
            md.storage_meta = StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md


class PlainDataPlanner(DefaultLoadPlanner):
    """DCP's default planner, except for how it reads bytes entries (see the module docstring)."""

    def __init__(self, *, allow_bytes: bool, where: Path):
        super().__init__()
        self.allow_bytes = allow_bytes
        self.where = where

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        current = self.state_dict.get(fqn)
        if isinstance(current, torch.Tensor) or not self.allow_bytes:
            raise UserError(_bytes_refusal(self.where, fqn))
        loaded = load_weights_only(value, f"checkpoint {self.where}: item {fqn}")
        check_plain(loaded, f"checkpoint {self.where}: item {fqn} holds")
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], loaded)
        else:
            self.state_dict[fqn] = loaded


def _bytes_refusal(where: Path, fqn: str) -> str:
    return (f"checkpoint {where}: refused: item {fqn} is stored as pickled bytes where a tensor "
            "belongs (a planted object; nothing in it was run)")


def _shape(t) -> list[int]:
    return list(t.shape) if isinstance(t, torch.Tensor) else []


def check_matches(md: Metadata, state: dict, where: Path, *, allow_bytes: bool,
                  strict_prefixes: tuple[str, ...] = ("model.",)) -> None:
    """UserError unless every entry of `state` is in the checkpoint with the same kind and shape,
    and the checkpoint holds no key under `strict_prefixes` that `state` lacks (a weight the model
    would silently drop)."""
    flat, _ = flatten_state_dict(state)
    saved = md.state_dict_metadata
    missing, shapes = [], []
    for fqn, obj in flat.items():
        entry = saved.get(fqn)
        if entry is None:
            missing.append(fqn)
        elif isinstance(entry, BytesStorageMetadata):
            if isinstance(obj, torch.Tensor) or not allow_bytes:
                raise UserError(_bytes_refusal(where, fqn))
        elif not isinstance(obj, torch.Tensor):
            shapes.append(f"{fqn}: a tensor in the checkpoint, a {type(obj).__name__} here")
        elif list(entry.size) != _shape(obj):
            shapes.append(f"{fqn}: {list(entry.size)} in the checkpoint, {_shape(obj)} here")
    unexpected = [k for k in saved if k.startswith(strict_prefixes) and k not in flat]
    if missing or shapes or unexpected:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape(s) differ ({'; '.join(shapes[:3])})")
        if missing:
            parts.append(f"{len(missing)} key(s) missing from it ({', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} key(s) this model lacks ({', '.join(unexpected[:3])})")
        raise UserError(f"checkpoint {where} does not match this model: {'; '.join(parts)}")


def _cause(exc: BaseException) -> BaseException:
    """The first rank's own exception inside DCP's CheckpointException wrapper."""
    for _ in range(8):  # DCP may wrap a wrapper (a step inside a collective inside a step)
        if not isinstance(exc, CheckpointException) or not exc.failures:
            return exc
        failure = next(iter(exc.failures.values()))  # (exception, traceback) of the first failed rank
        inner = failure[0] if isinstance(failure, tuple) else getattr(failure, "exc", failure)
        if not isinstance(inner, BaseException):
            return exc
        exc = inner
    return exc


def load_dcp(state: dict, path: Path, *, allow_bytes: bool, strict_prefixes: tuple[str, ...] = ("model.",)) -> None:
    """Fill `state` (tensors in place, plain values replaced) from the DCP checkpoint at `path`.

    UserError: the folder is planted or malformed, or holds another model. RunFailure (exit 1,
    with its own message): reading failed for another reason (I/O, memory, a bug) — those are not
    the input's fault, and saying "does not match" would send the user the wrong way.
    """
    md = read_metadata(path / ".metadata")
    check_matches(md, state, path, allow_bytes=allow_bytes, strict_prefixes=strict_prefixes)
    try:
        with warnings.catch_warnings():  # "no process group: loading in a single process" is fine
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, storage_reader=SafeReader(path),
                     planner=PlainDataPlanner(allow_bytes=allow_bytes, where=path))
    except (Exception, CheckpointException) as exc:
        cause = _cause(exc)
        if isinstance(cause, UserError):
            raise UserError(str(cause)) from None
        if isinstance(cause, MemoryError):
            raise RunFailure(f"checkpoint {path}: out of memory while loading") from None
        if isinstance(cause, OSError):
            raise RunFailure(f"checkpoint {path}: cannot be read: {cause.strerror or cause} "
                             f"({cause.filename or path})") from None
        lines = [ln for ln in str(cause).strip().splitlines() if ln.strip()]
        raise RunFailure(f"checkpoint {path}: loading failed: {type(cause).__name__}: "
                         f"{lines[-1].strip()[:300] if lines else ''}") from None
