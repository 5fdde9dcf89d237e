"""Plain files that came from outside: JSON documents and the paths written inside them.

Everything a run folder, a checkpoint or a prepared-data folder holds may have been edited or
planted (a shared disk, a download). These readers turn every way such a file can be wrong (missing,
unreadable, not UTF-8, not JSON, too large, the wrong shape, a path that leaves its folder) into one
`UserError` naming the file, so that every command reports it as one `error:` line.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from scaletrain.errors import UserError

# A run's JSON files are small (summary.json, trainer.json, checksums.json: kilobytes; a manifest
# of a million shards: ~200 MB). A larger file is not one of ours, and reading it would only
# exhaust memory.
MAX_JSON_BYTES = 256 << 20
# json.loads recurses once per nesting level: cap it far below Python's recursion limit.
MAX_JSON_DEPTH = 64


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _depth_ok(text: str, limit: int) -> bool:
    """Nesting depth of a JSON text without parsing it (strings skipped): parsing a deeply nested
    document is what would raise RecursionError."""
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _reject_constant(name: str) -> float:
    # json accepts NaN/Infinity, which no file of ours contains (json.dumps writes them only for
    # non-finite floats, and we never record those as settings).
    raise ValueError(f"non-standard number {name}")


def read_json(path: Path | str, *, what: str, expect: type | tuple[type, ...] = dict,
              max_bytes: int = MAX_JSON_BYTES, allow_nonfinite: bool = False) -> Any:
    """The JSON document at `path`, which must be a `expect` (dict by default).

    `what` says what the file is for the error line ("a run's summary", "checkpoint state"). Any
    problem is a UserError: `error: PATH: not valid JSON (…) — is it <what>?`.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise UserError(f"{path}: {size:,} bytes, larger than any {what} ({max_bytes:,} at most)")
        text = path.read_bytes().decode("utf-8")
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{path}: missing ({what})") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a directory, expected {what}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text at byte {exc.start} (expected {what})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or _first_line(exc)})") from None
    if not _depth_ok(text, MAX_JSON_DEPTH):
        raise UserError(f"{path}: JSON nested deeper than {MAX_JSON_DEPTH} levels (expected {what})")
    try:
        value = json.loads(text, parse_constant=None if allow_nonfinite else _reject_constant)
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{path}: not valid JSON ({_first_line(exc)}); expected {what}") from None
    if not isinstance(value, expect):
        names = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        shown = {dict: "an object", list: "a list", str: "a string"}.get(type(value), type(value).__name__)
        raise UserError(f"{path}: {shown} where {what} is a JSON {names.replace('dict', 'object')}")
    return value


def field(doc: dict, key: str, kind: type | tuple[type, ...], where: Path | str) -> Any:
    """`doc[key]`, which must be of `kind` (bool is never an int here; floats must be finite)."""
    if key not in doc:
        raise UserError(f"{where}: key {key!r} missing")
    value = doc[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if ok and isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        names = "/".join(k.__name__ for k in kinds)
        shown = repr(value) if len(repr(value)) <= 40 else type(value).__name__
        raise UserError(f"{where}: {key!r} must be {names} (got {shown})")
    return value


def inside(folder: Path | str, relative: object, *, what: str) -> Path:
    """`folder / relative`, refused unless it is a plain relative path that stays inside `folder`
    (no absolute path, no `..`, no symlink leading out). Paths written in manifests, checksum
    lists and checkpoint metadata are read through this."""
    folder = Path(folder)
    if not isinstance(relative, str) or not relative or "\0" in relative:
        raise UserError(f"{folder}: {what} names {relative!r}, not a file name")
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts or relative.startswith(("/", "\\")) or "\\" in relative:
        raise UserError(f"{folder}: {what} names {relative!r}, a path outside its folder (refused)")
    target = folder / rel
    base = os.path.realpath(folder)
    real = os.path.realpath(target)
    if os.path.commonpath([base, real]) != base:
        raise UserError(f"{folder}: {what} names {relative!r}, which leads outside its folder (refused)")
    return target
