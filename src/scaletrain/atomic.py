"""Atomic file writes: a temp file in the same directory, fsync, os.replace.

A crash or a concurrent reader never sees a half-written file: it sees the old one or the new one.
Files and folders made here follow the user's umask like any Unix tool (0644 / 0755 under umask
022): `mkstemp` and `mkdtemp` create them 0600 / 0700, which would keep a team from sharing runs
and data caches.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _read_umask() -> int:
    """The process umask. Linux reports it in /proc/self/status; elsewhere the only way is to
    set it and set it back, which a thread creating a file in between would see (hence once, at
    import, and only as the fallback)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()
FILE_MODE = 0o666 & ~UMASK  # what open(path, "w") would have given
DIR_MODE = 0o777 & ~UMASK  # what mkdir would have given


def make_temp_dir(parent: Path | str, prefix: str) -> Path:
    """A new, uniquely named folder in `parent` (mkdtemp), with the mode mkdir would give it."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, DIR_MODE)
    return path


@contextlib.contextmanager
def new_folder(path: Path | str, undo_on: type[BaseException] = BaseException) -> Iterator[Path]:
    """Make the folder `path` (missing or empty: checked) for a command to fill. If the command
    fails (raises `undo_on`), remove what it put there and the folders made for it, and give an
    empty folder it was handed back its time stamps: a failed command leaves nothing behind.
    (Built in place rather than renamed into place: what is written there may record its path.)"""
    path = Path(path)
    made = next((p for p in reversed((path.absolute(), *path.absolute().parents)) if not p.exists()), None)
    if made is None and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(errno.EEXIST, "not an empty folder", str(path))
    kept = path if made is None else made.parent  # the folder that existed: its time stamps come back
    times = (kept.stat().st_atime_ns, kept.stat().st_mtime_ns)
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except undo_on:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        else:
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.utime(kept, ns=times)
        raise


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "w", durable: bool = True) -> Iterator[IO[Any]]:
    """Yield a temp file next to `path`; on success fsync it and rename it over `path`.

    The temp file lives in the same directory because os.replace is only atomic within one
    filesystem. On any exception the temp file is removed and `path` is left untouched.
    `durable=False` skips the fsyncs (still all or nothing for readers, and for a crashed process:
    the page cache keeps what it wrote; not after a power loss): for many files made durable at
    once later (`fsync_files`), or scratch files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            os.fchmod(f.fileno(), FILE_MODE)
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)


def fsync_files(paths: list[Path]) -> None:
    """Make files written with `durable=False` durable, with their folders: many fsyncs at once
    (a thread pool: each waits on the disk, not the CPU), instead of one per file as it is written."""
    from concurrent.futures import ThreadPoolExecutor

    def one(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, paths))
        list(pool.map(_fsync_dir, sorted({Path(p).parent for p in paths})))


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """`atomic_open` for a library that writes a file by name (safetensors, ONNX): yield a temp
    path next to `path`; on success give it the umask's mode (safetensors creates 0600), fsync it
    and rename it over `path`. On any exception the temp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; best effort because some filesystems refuse it.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json_atomic(path: Path | str, obj: Any, durable: bool = True) -> None:
    """Write `obj` as indented JSON with a trailing newline, atomically. Raises TypeError on
    values JSON cannot represent (deliberately strict: silently stringifying hides bugs)."""
    with atomic_open(path, "w", durable=durable) as f:
        f.write(json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def write_bytes_atomic(path: Path | str, data: bytes, durable: bool = True) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path, "wb", durable=durable) as f:
        f.write(data)



def check_target(path: Path | str, what: str, *, folder: bool, must_be_new: bool = False) -> Path:
    """Refuse, before any work, a place that cannot receive the output: a file where a folder
    belongs (or a folder where a file belongs), a path below a file, or a read-only place.
    `what` names the setting in the error line (`--out`, `train.run_dir`)."""
    from scaletrain.errors import UserError

    path = Path(path).expanduser()
    if path.exists():
        if must_be_new:
            raise UserError(f"{what}: {path} already exists; choose a new {'folder' if folder else 'file'}")
        if folder and not path.is_dir():
            raise UserError(f"{what}: {path} is a file, not a folder")
        if not folder and path.is_dir():
            raise UserError(f"{what}: {path} is a folder, not a file")
    existing = next((p for p in (path, *path.absolute().parents) if p.exists()), None)
    if existing is not None and existing != path and not existing.is_dir():
        raise UserError(f"{what}: {existing} is a file, so {path} cannot be created")
    if existing is not None and not os.access(existing if existing.is_dir() else existing.parent, os.W_OK | os.X_OK):
        raise UserError(f"{what}: {existing} is not writable (read-only file system or no permission)")
    return path
