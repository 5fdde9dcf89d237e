"""Text corpora: list source files, read them, pick a deterministic subset."""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import xxhash

from scaletrain.errors import UserError

_EXCLUDED_DIRS = {"site-packages", "dist-packages"}


def stdlib_root() -> Path:
    """Directory of the running Python's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def stdlib_files() -> list[Path]:
    """Every `*.py` of the standard library, minus third-party packages, sorted by relative path."""
    root = stdlib_root()
    if not root.is_dir():
        raise UserError(f"standard library directory {root} not found")
    files = [
        p
        for p in root.rglob("*.py")
        if p.is_file() and not _EXCLUDED_DIRS.intersection(p.relative_to(root).parts)
    ]
    return sorted(files, key=lambda p: _rel(p, root))


def text_files(root: str | Path, pattern: str) -> list[Path]:
    """Files under `root` matching the glob `pattern` (e.g. `**/*.txt`), sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data directory {root} does not exist or is not a directory")
    try:
        files = [p for p in root.glob(pattern) if p.is_file()]
    except ValueError as e:  # pathlib rejects e.g. absolute or empty patterns
        raise UserError(f"bad file pattern {pattern!r} for {root}: {e}") from None
    if not files:
        raise UserError(f"no files match pattern {pattern!r} under {root}")
    return sorted(files, key=lambda p: _rel(p, root))


def read_text(path: str | Path) -> str:
    """File contents as utf-8; undecodable bytes become U+FFFD rather than failing a long run."""
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def _path_hash(rel: str) -> int:
    return xxhash.xxh64(rel.encode("utf-8")).intdigest()


def select_max_bytes(
    paths: list[Path], max_bytes: int | None, root: Path | None = None
) -> list[Path]:
    """Deterministic subset whose total size is at most `max_bytes` (always at least one file).

    Files are taken in order of the xxh64 of their path relative to `root` (default: the
    common parent of `paths`), so the subset is a spread-out sample, not one directory.
    Returns the subset sorted; `max_bytes=None` keeps everything.
    """
    paths = [Path(p) for p in paths]
    if max_bytes is None or not paths:
        return sorted(paths)
    if max_bytes <= 0:
        raise UserError(f"max_bytes must be positive, got {max_bytes}")
    if root is None:
        root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    ordered = sorted(paths, key=lambda p: (_path_hash(_rel(p, root)), _rel(p, root)))
    chosen: list[Path] = []
    total = 0
    for p in ordered:
        size = p.stat().st_size
        if chosen and total + size > max_bytes:
            continue  # a smaller later file may still fit
        chosen.append(p)
        total += size
    return sorted(chosen)
