"""The pickles a checkpoint holds, read without running anything they carry.

DCP writes its `.metadata` as a pickle, and unpickling is calling: a pickle may name any importable
callable and its arguments (`os.system`, or a class whose constructor starts a process). So the
metadata is read by an unpickler that builds an explicit list of classes, the dataclasses DCP's
metadata is made of, plus `torch.Size`, dtypes and layouts, and nothing else; the result is then
checked field by field (types, sizes, the paths it names), so that DCP never sees a value it did
not write itself.

`rng.pt` (checkpoints written before rng.safetensors) and DCP's non-tensor items are read with
torch's own weights-only unpickler (`torch.load(weights_only=True)`), never with a full one.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from pathlib import Path

import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    _MEM_FORMAT_ENCODING,
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

from scaletrain.errors import UserError
from scaletrain.untrusted.files import inside

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
# Every global a DCP .metadata pickle may name (torch 2.4-2.13), and nothing else.
ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    (_DCP_METADATA, "Metadata"): Metadata,
    (_DCP_METADATA, "TensorStorageMetadata"): TensorStorageMetadata,
    (_DCP_METADATA, "BytesStorageMetadata"): BytesStorageMetadata,
    (_DCP_METADATA, "ChunkStorageMetadata"): ChunkStorageMetadata,
    (_DCP_METADATA, "TensorProperties"): TensorProperties,
    (_DCP_METADATA, "MetadataIndex"): MetadataIndex,
    (_DCP_METADATA, "StorageMeta"): StorageMeta,
    (_DCP_METADATA, "_MEM_FORMAT_ENCODING"): _MEM_FORMAT_ENCODING,
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _StorageInfo,
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
    ("pathlib", "PosixPath"): Path,  # StorageMeta.checkpoint_id: where the saver wrote it
    ("pathlib", "PurePosixPath"): Path,
    ("pathlib", "WindowsPath"): Path,
    ("pathlib", "PureWindowsPath"): Path,
    ("collections", "OrderedDict"): dict,
}
_DTYPES = {str(v).removeprefix("torch."): v for v in vars(torch).values() if isinstance(v, torch.dtype)}

# A metadata file of a 400 B-parameter model sharded over thousands of ranks is tens of MB.
MAX_METADATA_BYTES = 1 << 30
# Values visited while checking one metadata object: bounds the work a pickle whose memo shares
# one list many times over (a "billion laughs" made of references) could cause.
MAX_METADATA_NODES = 50_000_000


class RestrictedUnpickler(pickle.Unpickler):
    """Builds only `ALLOWED_GLOBALS` and torch dtypes; any other global is refused by name."""

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        raise pickle.UnpicklingError(f"global {module}.{name} is not checkpoint metadata")

    def persistent_load(self, pid):  # DCP metadata has no persistent ids; torch files do
        raise pickle.UnpicklingError("a persistent id (not checkpoint metadata)")


class _Budget:
    def __init__(self, limit: int):
        self.left = limit

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise ValueError("more values than any checkpoint's metadata holds")


def _check_size(value, what: str, budget: _Budget, *, max_len: int = 64) -> None:
    if type(value) is not torch.Size or len(value) > max_len:
        raise ValueError(f"{what}: {type(value).__name__}, expected torch.Size")
    for dim in value:
        budget.spend()
        if type(dim) is not int or dim < 0:
            raise ValueError(f"{what}: dimension {dim!r}")


def _check_plain(value, what: str, budget: _Budget, depth: int = 0) -> None:
    """`value` is JSON-like data: str, int, float, bool, None, and lists/tuples/dicts of those."""
    budget.spend()
    if depth > 32:
        raise ValueError(f"{what}: nested too deeply")
    if value is None or type(value) in (str, int, bool):
        return
    if type(value) is float:
        return
    if type(value) in (list, tuple):
        for item in value:
            _check_plain(item, what, budget, depth + 1)
        return
    if type(value) is dict:
        for k, v in value.items():
            _check_plain(k, what, budget, depth + 1)
            _check_plain(v, what, budget, depth + 1)
        return
    raise ValueError(f"{what}: a {type(value).__name__} value")


def _check_properties(p, what: str) -> None:
    if type(p) is not TensorProperties:
        raise ValueError(f"{what}: properties are a {type(p).__name__}")
    if not isinstance(p.dtype, torch.dtype) or p.layout is not torch.strided:
        raise ValueError(f"{what}: dtype {p.dtype!r} / layout {p.layout!r}")
    if type(p.requires_grad) is not bool or type(p.pin_memory) is not bool:
        raise ValueError(f"{what}: properties")
    if not isinstance(p.memory_format, torch.memory_format):
        raise ValueError(f"{what}: memory format {p.memory_format!r}")


def _check_entry(fqn, entry, budget: _Budget) -> None:
    budget.spend()
    if type(fqn) is not str or not fqn:
        raise ValueError(f"key {fqn!r}")
    if type(entry) is BytesStorageMetadata:
        if vars(entry):
            raise ValueError(f"{fqn}: bytes entry with fields {sorted(vars(entry))}")
        return
    if type(entry) is not TensorStorageMetadata:
        raise ValueError(f"{fqn}: a {type(entry).__name__} entry")
    _check_properties(entry.properties, fqn)
    _check_size(entry.size, f"{fqn}: size", budget)
    if type(entry.chunks) is not list:
        raise ValueError(f"{fqn}: chunks")
    for chunk in entry.chunks:
        budget.spend()
        if type(chunk) is not ChunkStorageMetadata:
            raise ValueError(f"{fqn}: a chunk is a {type(chunk).__name__}")
        _check_size(chunk.offsets, f"{fqn}: chunk offsets", budget)
        _check_size(chunk.sizes, f"{fqn}: chunk sizes", budget)
        if len(chunk.offsets) != len(entry.size) or len(chunk.sizes) != len(entry.size) or any(
                o + s > n for o, s, n in zip(chunk.offsets, chunk.sizes, entry.size)):
            raise ValueError(f"{fqn}: a chunk outside the tensor")


def _check_storage(index, info, folder: Path, sizes: dict[str, int], budget: _Budget) -> None:
    budget.spend()
    if type(index) is not MetadataIndex or type(index.fqn) is not str:
        raise ValueError(f"storage key {type(index).__name__}")
    if index.offset is not None:
        _check_size(index.offset, f"{index.fqn}: offset", budget)
    if index.index is not None and type(index.index) is not int:
        raise ValueError(f"{index.fqn}: index")
    if type(info) is not _StorageInfo:
        raise ValueError(f"{index.fqn}: storage is a {type(info).__name__}")
    if info.transform_descriptors:  # compression or other stream transforms: we never write them
        raise ValueError(f"{index.fqn}: stream transforms {info.transform_descriptors!r}")
    name = info.relative_path
    if name not in sizes:  # UserError from `inside` names a path that leaves the folder
        path = inside(folder, name, what=f"checkpoint metadata (item {index.fqn})")
        sizes[name] = path.stat().st_size if path.is_file() else -1
    if sizes[name] < 0:
        raise ValueError(f"{index.fqn}: its data file {name!r} is missing")
    if type(info.offset) is not int or type(info.length) is not int or info.offset < 0 or info.length < 0 \
            or info.offset + info.length > sizes[name]:
        raise ValueError(f"{index.fqn}: bytes {info.offset}+{info.length} outside {name} ({sizes[name]} bytes)")


def check_metadata_object(md, folder: Path) -> None:
    """Raise ValueError (or UserError for a path leaving `folder`) unless `md` is a Metadata made
    only of the values DCP writes."""
    budget = _Budget(MAX_METADATA_NODES)
    if type(md) is not Metadata:
        raise ValueError(f"the top level is a {type(md).__name__}, not DCP Metadata")
    if type(md.state_dict_metadata) is not dict:
        raise ValueError("state_dict_metadata is not a mapping")
    for fqn, entry in md.state_dict_metadata.items():
        _check_entry(fqn, entry, budget)
    if type(md.storage_data) is not dict:
        raise ValueError("storage_data is not a mapping")
    sizes: dict[str, int] = {}
    ranges: dict[str, list[tuple[int, int, str]]] = {}
    for index, info in md.storage_data.items():
        _check_storage(index, info, folder, sizes, budget)
        if index.fqn not in md.state_dict_metadata:
            raise ValueError(f"storage for {index.fqn!r}, which the checkpoint does not declare")
        ranges.setdefault(info.relative_path, []).append((info.offset, info.offset + info.length, index.fqn))
    for name, spans in ranges.items():  # DCP writes each item once, back to back: ranges never overlap
        spans.sort()
        for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
            if start < end:
                raise ValueError(f"the bytes of {first} and {second} overlap in {name}")
    _check_plain(md.planner_data, "planner_data", budget)
    if md.version is not None and type(md.version) is not str:
        raise ValueError("version")
    meta = md.storage_meta
    if meta is not None:
        if type(meta) is not StorageMeta:
            raise ValueError(f"storage_meta is a {type(meta).__name__}")
        if meta.checkpoint_id is not None and not isinstance(meta.checkpoint_id, (str, os.PathLike)):
            raise ValueError("storage_meta.checkpoint_id")
        for key in ("save_id", "load_id"):
            if getattr(meta, key) is not None and type(getattr(meta, key)) is not str:
                raise ValueError(f"storage_meta.{key}")
        if type(meta.modules) is not list or any(type(m) is not str for m in meta.modules):
            raise ValueError("storage_meta.modules")
    extra = set(vars(md)) - {"state_dict_metadata", "planner_data", "storage_data", "storage_meta", "version"}
    if extra:
        raise ValueError(f"unexpected fields {sorted(extra)}")


def read_metadata(path: Path) -> Metadata:
    """DCP's `.metadata` at `path`, read with the restricted unpickler and checked; UserError
    naming the file otherwise ("refused" when it names a global outside the list)."""
    try:
        size = path.stat().st_size
        if size > MAX_METADATA_BYTES:
            raise UserError(f"{path}: {size:,} bytes, larger than any checkpoint metadata")
        with open(path, "rb") as fh:
            md = RestrictedUnpickler(fh).load()
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{path}: missing (not a complete checkpoint)") from None
    except pickle.UnpicklingError as exc:
        raise UserError(f"{path}: refused: {exc} (a pickle that would run code or build objects "
                        "checkpoints never hold; nothing in it was run)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # truncated, garbage, a constructor called with the wrong arguments
        raise UserError(f"{path}: not DCP checkpoint metadata ({type(exc).__name__}: "
                        f"{(str(exc).splitlines() or [''])[0][:200]})") from None
    try:
        check_metadata_object(md, path.parent)
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise UserError(f"{path}: not DCP checkpoint metadata ({str(exc)[:200]})") from None
    return md


def _plain_reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in lines if "GLOBAL" in line), lines[0][:200] if lines else type(exc).__name__)


def load_weights_only(data: bytes | io.BytesIO | Path, what: str):
    """`torch.load(weights_only=True)` of a file or buffer: torch's own restricted unpickler (plain
    containers, numbers, strings and tensors only). UserError naming `what` when it refuses."""
    try:
        return torch.load(data, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise UserError(f"{what}: refused: {_plain_reason(exc)} (a pickle that would run code; "
                        "nothing in it was run)") from None
    except (OSError, MemoryError):
        raise
    except Exception as exc:
        raise UserError(f"{what}: unreadable ({type(exc).__name__}: {_plain_reason(exc)})") from None


def check_plain(value, what: str) -> None:
    """UserError unless `value` is JSON-like data (what an optimizer's param_groups hold)."""
    try:
        _check_plain(value, what, _Budget(1_000_000))
    except ValueError as exc:
        raise UserError(f"{exc} where plain data belongs (refused)") from None


def finite_number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value)
