"""Build token shards from a text corpus, or reuse a cached build with the same inputs."""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
import xxhash
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from scaletrain.atomic import make_temp_dir
from scaletrain.data import corpus, shards
from scaletrain.data import tokenizer as tkz
from scaletrain.errors import UserError

# Bump when the shard format or the preparation recipe changes: invalidates old caches.
PREP_VERSION = 1
_ENCODE_BATCH_BYTES = 4 << 20  # text per encode call; bounds memory (Encoding objects are large)


@dataclass(frozen=True)
class TextSpec:
    """What to tokenize and how; every field is part of the cache key."""

    source: str  # "stdlib" or "dir"
    path: str | None
    pattern: str
    vocab_size: int
    val_fraction: float
    max_bytes: int | None
    # A tokenizer.json to tokenize with instead of training one (a pretrained model's), and the
    # token that ends each document (None: `<|endoftext|>`). vocab_size is then unused.
    tokenizer: str | None = None
    eot: str | None = None

    def validate(self) -> None:
        if self.source not in ("stdlib", "dir"):
            raise UserError(f"data source must be 'stdlib' or 'dir', got {self.source!r}")
        if self.source == "dir" and not self.path:
            raise UserError("data source 'dir' needs a path")
        if self.vocab_size < tkz.MIN_VOCAB_SIZE:
            raise UserError(
                f"vocab_size must be at least {tkz.MIN_VOCAB_SIZE}, got {self.vocab_size}"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise UserError(f"max_bytes must be positive, got {self.max_bytes}")
        if self.tokenizer is not None and not Path(self.tokenizer).is_file():
            raise UserError(f"tokenizer file {self.tokenizer} not found")


def _root(spec: TextSpec) -> Path:
    return corpus.stdlib_root() if spec.source == "stdlib" else Path(str(spec.path))


def _list_files(spec: TextSpec) -> list[Path]:
    """The files the spec selects (after max_bytes), sorted by relative path."""
    spec.validate()
    root = _root(spec)
    files = corpus.stdlib_files() if spec.source == "stdlib" else corpus.text_files(root, spec.pattern)
    chosen = corpus.select_max_bytes(files, spec.max_bytes, root)
    if len(chosen) < 2:
        raise UserError(
            f"need at least 2 files to split train/val, got {len(chosen)} from {root}"
            + (f" with max_bytes={spec.max_bytes}" if spec.max_bytes is not None else "")
        )
    train, _ = corpus.split_by_file(chosen, root, spec.val_fraction)
    if not any(p.stat().st_size for p in train):
        # Every document would be only its end-of-text token: a run would "train" on nothing.
        raise UserError(f"{root}: the {len(train)} training file(s) matching {spec.pattern!r} are empty "
                        "(0 bytes): there is no text to train on")
    return sorted(chosen, key=lambda p: p.relative_to(root).as_posix())


def inputs_fingerprint(spec: TextSpec, files: list[Path]) -> str:
    """xxh3_128 over the spec, library/recipe versions and each file's relative path, size, content."""
    root = _root(spec)
    h = xxhash.xxh3_128()
    fields = dataclasses.asdict(spec)
    # The absolute source path is not an input: moving a corpus should keep its cache.
    fields.pop("path")
    if spec.tokenizer is not None:  # what the tokenizer is, not where it lies
        fields["tokenizer"] = shards.file_xxh3(Path(spec.tokenizer))
        fields.pop("vocab_size")
    meta = {"prep_version": PREP_VERSION, "tokenizers": tokenizers.__version__, **fields}
    h.update(json.dumps(meta, sort_keys=True).encode("utf-8"))
    for p in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        h.update(f"\0{p.relative_to(root).as_posix()}\0{p.stat().st_size}\0".encode("utf-8"))
        h.update(shards.file_xxh3(p).encode("ascii"))
    return h.hexdigest()


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


def _batches(files: list[Path]) -> Iterator[list[Path]]:
    """Consecutive groups of about _ENCODE_BATCH_BYTES each.

    The Rust pool parallelizes across the documents of one call, so a batch must be large
    enough that a single big file does not leave the other threads idle.
    """
    batch: list[Path] = []
    size = 0
    for p in files:
        batch.append(p)
        size += p.stat().st_size
        if size >= _ENCODE_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _encoded_docs(
    tok: tokenizers.Tokenizer, files: list[Path], dtype: np.dtype, eot: int, advance: Any
) -> Iterator[np.ndarray]:
    """Token arrays, one per file, each ending with EOT."""
    for batch in _batches(files):
        texts = [corpus.read_text(p) for p in batch]
        # encode_batch_fast skips offset tracking, which we never use.
        for text, enc in zip(texts, tok.encode_batch_fast(texts)):
            raw = enc.ids  # builds a Python list on every access
            ids = np.empty(len(raw) + 1, dtype=dtype)
            ids[:-1] = raw
            ids[-1] = eot
            advance(len(text.encode("utf-8")))
            yield ids


def _utf8_size(files: list[Path]) -> int:
    # Sizes after errors="replace" decoding, so bits-per-byte matches what was tokenized.
    return sum(len(corpus.read_text(p).encode("utf-8")) for p in files)


def prepare_text(spec: TextSpec, out_dir: str | Path, workers: int = 2, progress: bool = True) -> Path:
    """Tokenize the corpus into `out_dir` (built in a temp dir, then renamed into place)."""
    out_dir = Path(out_dir)
    # The Rust thread pool reads this once, at first use; an explicit user setting wins.
    os.environ.setdefault("RAYON_NUM_THREADS", str(max(1, workers)))
    files = _list_files(spec)
    root = _root(spec)
    fingerprint = inputs_fingerprint(spec, files)
    train_files, val_files = corpus.split_by_file(files, root, spec.val_fraction)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out_dir.parent, prefix=f".{out_dir.name}.tmp-")
    try:
        with _progress(progress) as bar:
            if spec.tokenizer is not None:
                tok = tkz.load_tokenizer(spec.tokenizer)
            else:
                t = bar.add_task(f"training tokenizer on {len(train_files)} files", total=None)
                tok = tkz.train_tokenizer((corpus.read_text(p) for p in train_files), spec.vocab_size)
                bar.update(t, total=1, completed=1)
            vocab_size = tok.get_vocab_size()
            dtype = shards.token_dtype(vocab_size)
            eot = tkz.eot_id(tok, spec.eot)
            splits: dict[str, Any] = {}
            for name, split_files in (("train", train_files), ("val", val_files)):
                nbytes = _utf8_size(split_files)
                t = bar.add_task(f"tokenizing {name} ({len(split_files)} files)", total=nbytes)
                docs = _encoded_docs(tok, split_files, dtype, eot, lambda n, t=t: bar.advance(t, n))
                splits[name] = shards.write_split(tmp, name, docs, dtype, source_bytes=nbytes)
        tkz.save_tokenizer(tok, tmp / shards.TOKENIZER)
        shards.write_manifest(
            tmp,
            {
                "schema_version": shards.SCHEMA_VERSION,
                "dtype": dtype.name,
                "vocab_size": vocab_size,
                "tokenizer_fingerprint": tkz.tokenizer_fingerprint(tok),
                # Checked cheaply whenever the shards are opened (a swapped tokenizer file).
                "tokenizer_xxh3_128": shards.file_xxh3(tmp / shards.TOKENIZER),
                "inputs_fingerprint": fingerprint,
                "splits": splits,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "eot_id": eot,
            },
        )
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished build into place; an old build is moved aside first, then removed."""
    old: Path | None = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.replace(dst, old / dst.name)
    os.replace(src, dst)
    with contextlib.suppress(OSError):  # durability of the rename; not all filesystems allow it
        fd = os.open(dst.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _is_complete(d: Path, fingerprint: str) -> bool:
    """Matching manifest, and every shard present with the right size (a cheap check)."""
    try:
        if shards.read_manifest(d).get("inputs_fingerprint") != fingerprint:
            return False
        for split in ("train", "val"):
            shards.TokenShards(d, split)
        return (d / shards.TOKENIZER).is_file()
    except UserError:
        return False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_prepared(spec: TextSpec, cache_dir: str | Path, progress: bool = True) -> Path:
    """Shard directory for `spec` under `cache_dir`, built only if no matching build exists."""
    cache_dir = Path(cache_dir)
    files = _list_files(spec)
    fingerprint = inputs_fingerprint(spec, files)
    d = cache_dir / f"text-{fingerprint[:16]}"
    if _is_complete(d, fingerprint):
        return d
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create cache directory {cache_dir}: {e.strerror or e}") from None
    # One lock per build: a second process waits, then finds the first one's result.
    with _locked(cache_dir / f".{d.name}.lock"):
        if _is_complete(d, fingerprint):
            return d
        # Left over from a crashed build of this same directory; we hold its lock.
        for stale in cache_dir.glob(f".{d.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if progress:
            logging.getLogger(__name__).info("preparing %s (%d files)", d, len(files))
        return prepare_text(spec, d, progress=progress)


def corpus_stats(dir: str | Path) -> dict[str, Any]:
    """Per-split tokens, documents, source bytes and bytes/token of a prepared directory."""
    manifest = shards.read_manifest(dir)
    out: dict[str, Any] = {"vocab_size": manifest["vocab_size"], "dtype": manifest["dtype"]}
    for name, entry in manifest["splits"].items():
        out[name] = {
            "tokens": entry["tokens"],
            "documents": entry["documents"],
            "bytes": entry["bytes"],
            "bytes_per_token": entry["bytes"] / entry["tokens"] if entry["tokens"] else 0.0,
        }
    return out
