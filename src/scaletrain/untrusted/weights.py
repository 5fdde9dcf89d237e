"""Weights and model descriptions from outside: safetensors files and model_config.json.

safetensors cannot carry code (a JSON header and raw numbers, parsed by Rust), but a truncated,
random or mismatched file must still end in one line naming it. A model description is checked
before anything is allocated: it is built on the meta device first, so that a planted
`"n_layer": 1e9` is refused by its size instead of exhausting memory.

Every `model.safetensors` scaletrain writes records, in its safetensors metadata, the model
description it was made with (`scaletrain.model`) and the `format: pt` that `transformers`
expects; `check_recorded_spec` compares the two when both are there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from scaletrain.atomic import atomic_path
from scaletrain.errors import UserError

SPEC_KEY = "scaletrain.model"
TOKENIZER_KEY = "scaletrain.tokenizer"


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.endswith(":")]
    return (useful or lines or [type(exc).__name__])[0][:300]


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def build_checked(build, where: Path | str) -> nn.Module:
    """`build()` (a model constructor), first on the meta device to count its parameters: a
    description whose weights would not fit in this machine's memory is refused before any
    allocation."""
    try:
        with torch.device("meta"):
            skeleton = build()
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError, OverflowError) as exc:
        raise UserError(f"{where}: not a model description this version can build ({_first_line(exc)})") from None
    size = sum(p.numel() * p.element_size() for p in skeleton.parameters())
    if size > _memory_bytes():
        raise UserError(f"{where}: describes a model of {size / 2**30:,.1f} GiB of weights, more than this "
                        f"machine's memory ({_memory_bytes() / 2**30:,.1f} GiB)")
    del skeleton
    return build()


def save_weights(model: nn.Module, path: Path, *, spec: dict | None = None,
                 tokenizer_fingerprint: str | None = None) -> None:
    """`path` atomically (tied tensors stored once), with `format: pt` and, when given, the model
    description and the tokenizer's fingerprint in the safetensors metadata."""
    from safetensors.torch import save_model

    metadata = {"format": "pt"}
    if spec is not None:
        metadata[SPEC_KEY] = json.dumps(spec, sort_keys=True)
    if tokenizer_fingerprint is not None:
        metadata[TOKENIZER_KEY] = tokenizer_fingerprint
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata=metadata)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """`path` atomically from named tensors (contiguous, no two sharing storage), with the
    `format: pt` metadata `transformers` and `peft` expect."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


def read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, list[int]]]]:
    """(metadata, {name: (dtype, shape)}) of a safetensors file; UserError naming it otherwise."""
    from safetensors import safe_open

    if not path.is_file():
        raise UserError(f"{path}: missing")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {}
            for name in f.keys():
                sl = f.get_slice(name)
                tensors[name] = (sl.get_dtype(), list(sl.get_shape()))
    except (OSError, MemoryError):
        raise
    except Exception as exc:  # SafetensorError: truncated, random, a header that lies about offsets
        raise UserError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
    return metadata, tensors


_DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                torch.int8: "I8", torch.uint8: "U8", torch.int32: "I32", torch.int64: "I64", torch.bool: "BOOL"}


def load_weights(model: nn.Module, path: Path, *, spec: dict | None = None) -> dict[str, str]:
    """Fill `model` from the safetensors file `path`, strictly: every tensor present, none extra,
    same shapes and dtypes. `spec`: the description the model was built from, compared with the
    one the file records. Returns the file's metadata."""
    from safetensors.torch import load_model

    metadata, tensors = read_header(path)
    if spec is not None:
        check_recorded_spec(metadata, spec, path)
    expected = {k: v for k, v in model.state_dict().items()}
    stored_names = set(tensors)
    problems = []
    for name, dtype_shape in tensors.items():
        target = expected.get(name)
        if target is None:
            continue  # reported below (unless a tied alias safetensors dropped)
        dtype, shape = dtype_shape
        if shape != list(target.shape):
            problems.append(f"{name}: {shape} in the file, {list(target.shape)} in the model")
        elif dtype != _DTYPE_NAMES.get(target.dtype, dtype):
            problems.append(f"{name}: {dtype} in the file, {_DTYPE_NAMES.get(target.dtype)} in the model")
    if problems:
        raise UserError(f"{path}: does not match the model description ({len(problems)} tensor(s) differ: "
                        f"{'; '.join(problems[:3])})")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (OSError, MemoryError):
        raise
    except Exception as exc:
        raise UserError(f"{path}: cannot load the weights into the model ({_first_line(exc)})") from None
    unexpected = sorted(set(unexpected) & stored_names)
    if missing or unexpected:
        raise UserError(f"{path}: does not match the model description (missing {sorted(missing)[:3]}, "
                        f"unexpected {unexpected[:3]}): another architecture?")
    return metadata


def check_recorded_spec(metadata: dict[str, str], spec: dict, path: Path) -> None:
    """UserError naming the differing keys when the file records another model description."""
    recorded = metadata.get(SPEC_KEY)
    if recorded is None:
        return  # written before descriptions were recorded, or by another tool
    try:
        saved = json.loads(recorded)
    except ValueError:
        raise UserError(f"{path}: its recorded model description is not JSON (a tampered file?)") from None
    diff = spec_differences(saved, spec, source="in the weights file")
    if diff:
        raise UserError(f"{path}: made for another model than its model_config.json describes ({diff})")


def spec_differences(saved: object, current: object, prefix: str = "model", source: str = "in the checkpoint") -> str:
    """'' when equal, else 'model.rope: false in the checkpoint, true here; ...' (3 at most)."""
    found: list[str] = []

    def walk(a, b, key):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                if k in ("args",):
                    walk(a.get(k), b.get(k), key)
                else:
                    walk(a.get(k), b.get(k), f"{key}.{k}")
        elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            found.append(f"{key}: {json.dumps(a)} {source}, {json.dumps(b)} here")

    walk(saved, current, prefix)
    return "; ".join(found[:3]) + (f" (and {len(found) - 3} more)" if len(found) > 3 else "")
