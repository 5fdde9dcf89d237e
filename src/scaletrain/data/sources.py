"""Input sources for `scaletrain prepare`: text files, JSONL (plain or compressed), Parquet, the
embedded stdlib corpus.

A source is planned into tasks (a group of text files, a byte range of a JSONL file, a whole
compressed JSONL file, one Parquet row group); a task is read in one worker and yields documents
with a stable id (source index, file, line offset / row). Bad input is counted per kind, never raised: a corpus
far larger than memory always has a few broken lines, and one must not stop a long run.
"""
from __future__ import annotations

import glob
import io
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from scaletrain.data import corpus
from scaletrain.errors import UserError
from scaletrain.extras import require

KINDS = ("text", "jsonl", "parquet", "stdlib")
# Compressed JSONL, decompressed as a stream by pyarrow (no byte ranges: one task per file).
COMPRESSED = (".gz", ".zst", ".bz2", ".lz4", ".br")
# Planning estimate of text bytes per compressed byte (for the tokenizer sample's rate only).
COMPRESSION_ESTIMATE = 4


@dataclass(frozen=True)
class SourceSpec:
    """One input: a path (file, directory or glob) of one kind, with a mixture weight."""

    kind: str  # one of KINDS
    path: str | None = None
    pattern: str = "**/*"  # files under a directory (text and jsonl)
    field: str = "text"  # JSONL key / Parquet column holding the document
    weight: float = 1.0
    max_bytes: int | None = None  # a deterministic subset of the files (spread by path hash)


@dataclass(frozen=True)
class Task:
    """A unit of work: what one worker reads, and the name its outputs carry."""

    index: int
    source: int  # index into the source list
    kind: str
    files: tuple[str, ...]  # absolute paths
    rel: tuple[str, ...]  # the same paths relative to the source root: part of document ids
    start: int = 0  # jsonl: byte range [start, stop); parquet: row group
    stop: int = 0
    nbytes: int = 0  # planned input bytes (text after decompression, estimated for compressed files)


def compressed(path: str) -> bool:
    return path.lower().endswith(COMPRESSED)


def infer_kind(path: str, pattern: str | None = None) -> str:
    """Source kind from a path's extension, or for a directory from its file pattern's (`**/*.jsonl`);
    anything else is text. A compression suffix (`.jsonl.gz`, `.jsonl.zst`) is looked through."""
    name = path.lower()
    if pattern is not None and Path(path).is_dir():
        name = pattern.lower()
    for suffix in COMPRESSED:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "text"


def _files(spec: SourceSpec) -> tuple[Path, list[Path]]:
    root, files = _all_files(spec)
    if spec.max_bytes is not None:
        files = corpus.select_max_bytes(files, spec.max_bytes, root)
    return root, sorted(files, key=lambda p: _rel(p, root))


def _all_files(spec: SourceSpec) -> tuple[Path, list[Path]]:
    """(root, files) of a source, sorted by path relative to root; UserError when it matches nothing."""
    if spec.kind == "stdlib":
        return corpus.stdlib_root(), corpus.stdlib_files()
    assert spec.path is not None
    path = Path(spec.path)
    if path.is_file():
        return path.parent, [path]
    if path.is_dir():
        return path, corpus.text_files(path, spec.pattern)
    if glob.has_magic(spec.path):
        files = sorted(Path(p) for p in glob.glob(spec.path, recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"input {spec.path!r} matches no files")
        # Ids are relative to the glob's fixed prefix, so moving the corpus keeps them stable.
        fixed = []
        for part in Path(spec.path).parts:
            if glob.has_magic(part):
                break
            fixed.append(part)
        return (Path(*fixed) if fixed else Path(".")), files
    raise UserError(f"input {spec.path} does not exist")


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def plan_tasks(sources: list[SourceSpec], task_bytes: int | Callable[[int], int]) -> list[Task]:
    """Split every source into tasks of about `task_bytes` of input (or `task_bytes(total input
    bytes)`); deterministic order."""
    listed = [(spec, *_files(spec)) for spec in sources]
    if callable(task_bytes):
        task_bytes = task_bytes(sum(p.stat().st_size for _, _, files in listed for p in files))
    tasks: list[Task] = []
    for s, (spec, root, files) in enumerate(listed):
        if spec.kind in ("text", "stdlib"):
            group: list[Path] = []
            size = 0
            for p in files:
                group.append(p)
                size += p.stat().st_size
                if size >= task_bytes:
                    tasks.append(_text_task(len(tasks), s, spec.kind, group, root, size))
                    group, size = [], 0
            if group:
                tasks.append(_text_task(len(tasks), s, spec.kind, group, root, size))
        elif spec.kind == "jsonl":
            for p in files:
                size = p.stat().st_size
                if compressed(p.name):
                    tasks.append(Task(len(tasks), s, "jsonl", (str(p),), (_rel(p, root),), 0, size,
                                      size * COMPRESSION_ESTIMATE))
                    continue
                for lo in range(0, max(size, 1), task_bytes):
                    hi = min(lo + task_bytes, size)
                    tasks.append(Task(len(tasks), s, "jsonl", (str(p),), (_rel(p, root),), lo, hi, hi - lo))
        elif spec.kind == "parquet":
            for p in files:
                for rg, nbytes in enumerate(_row_groups(p, spec.field)):
                    tasks.append(Task(len(tasks), s, "parquet", (str(p),), (_rel(p, root),), rg, rg + 1, nbytes))
        else:
            raise UserError(f"source kind must be one of {', '.join(KINDS)}, got {spec.kind!r}")
    return tasks


def _text_task(i: int, s: int, kind: str, group: list[Path], root: Path, size: int) -> Task:
    return Task(i, s, kind, tuple(str(p) for p in group), tuple(_rel(p, root) for p in group), nbytes=size)


def _row_groups(path: Path, column: str) -> list[int]:
    """Uncompressed bytes of `column` in each row group (from the footer; nothing else is read)."""
    pa = require("pyarrow", "parquet", "reading Parquet files")
    pq = require("pyarrow.parquet", "parquet", "reading Parquet files")

    try:
        f = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{path}: not a readable Parquet file ({e})") from None
    schema = f.schema_arrow
    if column not in schema.names:
        raise UserError(f"{path}: no column {column!r} (columns: {', '.join(schema.names)})")
    t = schema.field(column).type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise UserError(f"{path}: column {column!r} has type {t}, expected a string column")
    meta, i = f.metadata, schema.get_field_index(column)
    return [meta.row_group(rg).column(i).total_uncompressed_size for rg in range(f.num_row_groups)]


@dataclass
class Doc:
    id: str  # stable: "source:file:line-offset-or-row"
    text: str


def _decode(data: bytes, undecodable: str, skipped: Counter, repaired: Counter) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        if undecodable == "skip":
            skipped["undecodable"] += 1
            return None
        repaired["undecodable"] += 1
        return data.decode("utf-8", errors="replace")


def read_task(task: Task, field: str, max_doc_bytes: int, undecodable: str,
              skipped: Counter, repaired: Counter, raw_hash=None) -> Iterator[Doc]:
    """Documents of one task. Bad input increments `skipped[kind]`; `raw_hash.update` sees the
    raw bytes read (for the source fingerprint)."""
    if task.kind in ("text", "stdlib"):
        yield from _read_text(task, max_doc_bytes, undecodable, skipped, repaired, raw_hash)
    elif task.kind == "jsonl":
        yield from _read_jsonl(task, field, max_doc_bytes, undecodable, skipped, repaired, raw_hash)
    else:
        yield from _read_parquet(task, field, skipped, raw_hash)


def _read_text(task, max_doc_bytes, undecodable, skipped, repaired, raw_hash) -> Iterator[Doc]:
    for path, rel in zip(task.files, task.rel):
        try:
            size = Path(path).stat().st_size
            if size > max_doc_bytes:
                # Never read it whole: an absurd file must not exhaust a worker's memory.
                skipped["too_long"] += 1
                continue
            data = Path(path).read_bytes()
        except OSError:
            skipped["unreadable"] += 1
            continue
        if raw_hash is not None:
            raw_hash.update(rel.encode() + b"\0" + data)
        if not data.strip():
            skipped["empty"] += 1
            continue
        text = _decode(data, undecodable, skipped, repaired)
        if text is not None:
            yield Doc(f"{task.source}:{rel}", text)


def _read_jsonl(task, field, max_doc_bytes, undecodable, skipped, repaired, raw_hash) -> Iterator[Doc]:
    """Lines that start in [start, stop): each line belongs to exactly one task."""
    path, rel = task.files[0], task.rel[0]
    packed = compressed(path)
    try:
        f = _open_jsonl(path, packed)
    except (OSError, ValueError):  # ValueError: pyarrow's ArrowInvalid (an unknown codec)
        skipped["unreadable"] += 1
        return
    with f:
        if task.start == task.stop == 0:
            skipped["empty"] += 1
            return
        pos = task.start
        if pos > 0:
            f.seek(pos - 1)
            if f.read(1) != b"\n":  # mid-line: that line belongs to the previous task
                pos = _skip_line(f, max_doc_bytes)
        if not packed:
            f.seek(pos)
        # A compressed file is one task, read to its end; offsets count decompressed bytes.
        while packed or pos < task.stop:
            try:
                line = f.readline(max_doc_bytes + 1)
                start, pos = pos, pos + len(line)
                if len(line) > max_doc_bytes and not line.endswith(b"\n"):
                    skipped["too_long"] += 1
                    pos = _skip_line(f, max_doc_bytes, pos)
                    if not packed:
                        f.seek(pos)
                    continue
            except (OSError, EOFError, ValueError):  # a truncated or corrupt compressed stream
                skipped["unreadable"] += 1
                break
            if not line:
                break
            if raw_hash is not None:
                raw_hash.update(line)
            if not line.strip():
                skipped["empty"] += 1
                continue
            text = _decode(line, undecodable, skipped, repaired)
            if text is None:
                continue
            try:
                obj = json.loads(text)
            except ValueError:
                skipped["bad_json"] += 1
                continue
            value = obj.get(field) if isinstance(obj, dict) else None
            if not isinstance(value, str):
                skipped["missing_field"] += 1
                continue
            if not value.strip():  # as for Parquet: a document with no text is no document
                skipped["empty"] += 1
                continue
            yield Doc(f"{task.source}:{rel}:{start}", value)


def _open_jsonl(path: str, packed: bool):
    if not packed:
        return open(path, "rb")
    import pyarrow as pa

    try:
        return io.BufferedReader(pa.input_stream(path, compression="detect"), 1 << 20)
    except pa.ArrowException as e:
        raise ValueError(str(e)) from None


def _skip_line(f, chunk: int, pos: int | None = None) -> int:
    """Advance past the next newline without holding the line; returns the new position
    (counted from `pos` when given: a decompressing stream cannot tell)."""
    while True:
        block = f.readline(chunk)
        if pos is not None:
            pos += len(block)
        if not block or block.endswith(b"\n"):
            return f.tell() if pos is None else pos


def _read_parquet(task, column, skipped, raw_hash) -> Iterator[Doc]:
    pa = require("pyarrow", "parquet", "reading Parquet files")
    pq = require("pyarrow.parquet", "parquet", "reading Parquet files")

    path, rel = task.files[0], task.rel[0]
    try:
        table = pq.ParquetFile(path).read_row_group(task.start, columns=[column])
    except (OSError, pa.ArrowException):
        skipped["unreadable"] += 1
        return
    values = table.column(column).to_pylist()
    for row, value in enumerate(values):
        if value is None:
            skipped["missing_field"] += 1
            continue
        if raw_hash is not None:
            raw_hash.update(value.encode("utf-8", errors="surrogatepass"))
        if not value.strip():
            skipped["empty"] += 1
            continue
        yield Doc(f"{task.source}:{rel}:{task.start}:{row}", value)
