"""Memory-mapped token shards with a JSON manifest.

Layout of a shard directory:
    manifest.json            written last; its presence marks a complete directory
    tokenizer.json
    {split}_{k:05d}.bin      token ids, raw little-endian uint16/uint32, no header
    {split}_{k:05d}.idx      document start offsets within that shard, raw little-endian
                             int64, no header, one per document (a document ends where the
                             next starts, the last at the end of the shard)
Documents never span shards.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
import xxhash

from scaletrain.atomic import write_bytes_atomic
from scaletrain.errors import UserError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
_CHUNK = 8 << 20  # bytes per read when hashing
_IDX_DTYPE = np.dtype("<i8")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32 (little-endian either way)."""
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")


def file_xxh3(path: Path) -> str:
    """Streaming xxh3_128 hex digest of a file."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _ShardWriter:
    """One shard being written: hashes as it goes, so nothing is re-read afterwards."""

    def __init__(self, out_dir: Path, name: str, durable: bool = True) -> None:
        self.durable = durable
        self.path = out_dir / name
        self.tmp = out_dir / f".{name}.tmp"
        self.f: IO[bytes] = open(self.tmp, "wb")
        self.hash = xxhash.xxh3_128()
        self.starts: list[int] = []
        self.tokens = 0

    def add(self, doc: np.ndarray) -> None:
        data = doc.tobytes()
        self.f.write(data)
        self.hash.update(data)
        self.starts.append(self.tokens)
        self.tokens += doc.size

    def close(self, idx_name: str) -> dict[str, Any]:
        self.f.flush()
        if self.durable:
            os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)
        idx = np.asarray(self.starts, dtype=_IDX_DTYPE).tobytes()
        write_bytes_atomic(self.path.parent / idx_name, idx, durable=self.durable)
        return {
            "bin": self.path.name,
            "idx": idx_name,
            "tokens": self.tokens,
            "documents": len(self.starts),
            "xxh3_128": {"bin": self.hash.hexdigest(), "idx": xxhash.xxh3_128_hexdigest(idx)},
        }

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def write_split(
    out_dir: str | Path,
    split: str,
    docs: Iterable[np.ndarray],
    dtype: np.dtype | str,
    shard_tokens: int = 2**24,
    source_bytes: int = 0,
    prefix: str | None = None,
    durable: bool = True,
) -> dict[str, Any]:
    """Write `docs` (1-D token arrays) as shards of at most `shard_tokens` tokens.

    A document longer than `shard_tokens` gets a shard of its own. Returns the manifest
    entry for the split; `source_bytes` is the utf-8 size of the text it came from. Files are
    named `{prefix}_{k:05d}.bin/.idx` (prefix defaults to the split name; the parallel
    preparation gives each task its own prefix so tasks never write the same file).
    `durable=False`: no fsync per file (the caller makes them all durable at once, before its
    manifest: `atomic.fsync_files`).
    """
    prefix = prefix or split
    out_dir = Path(out_dir)
    dtype = np.dtype(dtype).newbyteorder("<")
    if dtype not in (np.dtype("<u2"), np.dtype("<u4")):
        raise ValueError(f"token dtype must be uint16 or uint32, got {dtype}")
    if shard_tokens <= 0:
        raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
    limit = np.iinfo(dtype).max
    files: list[dict[str, Any]] = []
    writer: _ShardWriter | None = None
    try:
        for doc in docs:
            doc = np.asarray(doc)
            if doc.ndim != 1:
                raise ValueError(f"documents must be 1-D token arrays, got shape {doc.shape}")
            # Silent wrap-around would corrupt training data; fail loudly instead.
            if doc.size and (int(doc.min()) < 0 or int(doc.max()) > limit):
                raise ValueError(f"token id out of range for {dtype.name}")
            if writer is not None and writer.tokens and writer.tokens + doc.size > shard_tokens:
                files.append(writer.close(f"{prefix}_{len(files):05d}.idx"))
                writer = None
            if writer is None:
                writer = _ShardWriter(out_dir, f"{prefix}_{len(files):05d}.bin", durable)
            writer.add(doc.astype(dtype, copy=False))
        if writer is not None:
            files.append(writer.close(f"{prefix}_{len(files):05d}.idx"))
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    return {
        "files": files,
        "tokens": sum(f["tokens"] for f in files),
        "documents": sum(f["documents"] for f in files),
        "bytes": int(source_bytes),
    }


# The manifest's checksum of itself: every shard file has one in the manifest, and without this a
# flipped digit in a field no file size depends on (eot_id, bytes, vocab_size) would go unseen.
_SELF_SUM = "manifest_xxh3_128"


def _manifest_digest(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != _SELF_SUM}
    return xxhash.xxh3_128_hexdigest(json.dumps(body, sort_keys=True).encode("utf-8"))


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json atomically (write it last: it marks the directory complete), with a
    checksum of its own content."""
    manifest = {**{k: v for k, v in manifest.items() if k != _SELF_SUM}, _SELF_SUM: _manifest_digest(manifest)}
    data = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8") + b"\n"
    write_bytes_atomic(Path(out_dir) / MANIFEST, data)


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """Parsed manifest.json; UserError naming the file if missing, corrupt, of another schema, or
    of the wrong shape. A prepared folder may come from anywhere (a shared disk, a download), and
    its self-checksum proves only consistency: every field the readers use is checked here for its
    type, and every file it names must stay inside the folder (no `..`, no absolute path, no
    symlink leading out), so that no reader ever follows a planted path."""
    from scaletrain.untrusted.files import read_json

    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise UserError(f"token shard manifest {path} not found")
    manifest = read_json(path, what="a token shard manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION or isinstance(manifest.get("schema_version"), bool):
        shown = manifest.get("schema_version")
        raise UserError(f"token shard manifest {path} has schema_version "
                        f"{shown if len(repr(shown)) <= 40 else type(shown).__name__!r}, expected {SCHEMA_VERSION}")
    if _SELF_SUM in manifest and manifest[_SELF_SUM] != _manifest_digest(manifest):  # older ones have none
        raise UserError(f"token shard manifest {path} does not match its checksum (damaged)")
    _check_manifest_shape(manifest, Path(out_dir), path)
    return manifest


def _check_manifest_shape(manifest: dict[str, Any], folder: Path, path: Path) -> None:
    from scaletrain.untrusted.files import field, inside

    where = f"token shard manifest {path} is malformed"

    def count(doc: dict, key: str, at: str) -> int:
        value = field(doc, key, int, f"{where}: {at}")
        if value < 0:
            raise UserError(f"{where}: {at}: {key!r} is negative ({value})")
        return value

    field(manifest, "dtype", str, where)  # which dtypes are allowed: _checked_dtype
    vocab = count(manifest, "vocab_size", "top level")
    eot = count(manifest, "eot_id", "top level")
    if eot >= vocab:
        raise UserError(f"{where}: eot_id {eot} is outside the vocabulary (vocab_size {vocab})")
    for key in ("tokenizer_fingerprint", "tokenizer_xxh3_128"):
        if key in manifest:
            field(manifest, key, str, where)
    splits = field(manifest, "splits", dict, where)
    for split, entry in splits.items():
        at = f"splits.{split}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: {at} is not a mapping")
        for key in ("tokens", "documents", "bytes"):
            count(entry, key, at)
        files = field(entry, "files", list, f"{where}: {at}")
        for k, f in enumerate(files):
            at_file = f"{at}.files[{k}]"
            if not isinstance(f, dict):
                raise UserError(f"{where}: {at_file} is not a mapping")
            count(f, "tokens", at_file)
            count(f, "documents", at_file)
            sums = field(f, "xxh3_128", dict, f"{where}: {at_file}")
            for kind in ("bin", "idx"):
                inside(folder, field(f, kind, str, f"{where}: {at_file}"), what=f"{path.name} ({at_file}.{kind})")
                field(sums, kind, str, f"{where}: {at_file}.xxh3_128")
        for key in ("tokens", "documents"):  # readers size the split from its total
            if sum(f[key] for f in files) != entry[key]:
                raise UserError(f"{where}: {at}: {key} total {entry[key]} does not match its files "
                                f"({sum(f[key] for f in files)})")


def _split_entry(manifest: dict[str, Any], out_dir: Path, split: str) -> dict[str, Any]:
    splits = manifest.get("splits", {})
    if split not in splits:
        raise UserError(
            f"split {split!r} not in {out_dir / MANIFEST} (has: {', '.join(sorted(splits))})"
        )
    return splits[split]


def _checked_dtype(manifest: dict[str, Any], path: Path) -> np.dtype:
    """The token dtype, which must be uint16/uint32 and hold every id of the vocabulary."""
    try:
        dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    except TypeError:
        raise UserError(f"token shard manifest {path}: unknown dtype {manifest['dtype']!r}") from None
    if dtype not in (np.dtype("<u2"), np.dtype("<u4")):
        raise UserError(f"token shard manifest {path}: dtype {dtype.name}, expected uint16 or uint32")
    if int(manifest["vocab_size"]) - 1 > np.iinfo(dtype).max:
        raise UserError(f"token shard manifest {path}: dtype {dtype.name} cannot hold "
                        f"vocab_size {manifest['vocab_size']}")
    return dtype


def _expected_sizes(entry: dict[str, Any], itemsize: int) -> list[tuple[str, int]]:
    out = []
    for f in entry["files"]:
        out.append((f["bin"], f["tokens"] * itemsize))
        out.append((f["idx"], f["documents"] * _IDX_DTYPE.itemsize))
    return out


class TokenShards:
    """Read-only view of one split's shards as a single token sequence.

    `tokens` is the memmap itself when there is one shard; otherwise this object, which
    supports `len()` and step-1 slicing. `get(start, length)` always works and returns int64.
    """

    def __init__(self, dir: str | Path, split: str, verify: bool = False,
                 tokenizer_fingerprint: str | None = None) -> None:
        """Open `split` of `dir`. Always checked: the manifest's fields, dtype against vocabulary,
        every file's existence and size, and tokenizer.json against the manifest's checksum.
        `verify=True` also recomputes every shard's checksum (reads the whole split);
        `tokenizer_fingerprint`: the fingerprint the caller expects (e.g. a run's tokenizer)."""
        self.dir = Path(dir)
        self.split = split
        manifest = read_manifest(self.dir)
        entry = _split_entry(manifest, self.dir, split)
        path = self.dir / MANIFEST
        try:
            self.dtype = _checked_dtype(manifest, path)
            self.vocab_size = int(manifest["vocab_size"])
            self.eot_id = int(manifest["eot_id"])
            self.num_tokens = int(entry["tokens"])
            self.num_documents = int(entry["documents"])
            self.source_bytes = int(entry["bytes"])
            _expected_sizes(entry, self.dtype.itemsize)  # every file entry has its keys
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"token shard manifest {path} is malformed ({type(e).__name__}: {e})") from None
        if tokenizer_fingerprint is not None and manifest.get("tokenizer_fingerprint") != tokenizer_fingerprint:
            raise UserError(f"token shard manifest {path} was made with another tokenizer "
                            f"({str(manifest.get('tokenizer_fingerprint'))[:16]}, expected {tokenizer_fingerprint[:16]})")
        tok_sum = manifest.get("tokenizer_xxh3_128")
        if tok_sum is not None:
            tok = self.dir / TOKENIZER
            if not tok.is_file() or file_xxh3(tok) != tok_sum:
                raise UserError(f"tokenizer {tok} is missing or does not match {path} (checksum)")
        # Cheap integrity check at open: existence and size; checksums are verify()'s job.
        for name, size in _expected_sizes(entry, self.dtype.itemsize):
            path = self.dir / name
            if not path.is_file():
                raise UserError(f"token shard {path} is missing")
            actual = path.stat().st_size
            if actual != size:
                raise UserError(f"token shard {path} has {actual} bytes, manifest says {size}")
        if verify:
            for f in entry["files"]:
                for kind in ("bin", "idx"):
                    if file_xxh3(self.dir / f[kind]) != f["xxh3_128"][kind]:
                        raise UserError(f"token shard {self.dir / f[kind]} does not match its checksum")
                problem = _ids_problem(self.dir / f["bin"], self.dtype, self.vocab_size)
                if problem:
                    raise UserError(f"token shard {problem}")
        self._shards: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        offset = 0
        for f in entry["files"]:
            n = int(f["tokens"])
            # np.memmap cannot map an empty file.
            mm = (
                np.memmap(self.dir / f["bin"], dtype=self.dtype, mode="r", shape=(n,))
                if n
                else np.empty(0, self.dtype)
            )
            self._shards.append(mm)
            starts.append(np.fromfile(self.dir / f["idx"], dtype=_IDX_DTYPE) + offset)
            offset += n
        self._offsets = np.cumsum([0] + [len(s) for s in self._shards]).astype(np.int64)
        self.doc_starts: np.ndarray = (
            np.concatenate(starts) if starts else np.empty(0, np.int64)
        )
        """Global start offset of every document (int64), sorted."""

    @property
    def tokens(self) -> Any:
        """All tokens as one ndarray-like sequence."""
        return self._shards[0] if len(self._shards) == 1 else self

    def __len__(self) -> int:
        return self.num_tokens

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("TokenShards supports slicing only; use get() for single tokens")
        start, stop, step = key.indices(self.num_tokens)
        if step != 1:
            raise ValueError("TokenShards slicing supports step 1 only")
        return self.get(start, max(0, stop - start))

    def get(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) as int64, reading across shard boundaries."""
        if start < 0 or length < 0 or start + length > self.num_tokens:
            raise IndexError(
                f"range [{start}, {start + length}) outside {self.split} tokens (0..{self.num_tokens})"
            )
        out = np.empty(length, dtype=np.int64)
        k = int(np.searchsorted(self._offsets, start, side="right")) - 1
        pos = 0
        while pos < length:
            shard = self._shards[k]
            lo = start + pos - int(self._offsets[k])
            n = min(length - pos, len(shard) - lo)
            out[pos : pos + n] = shard[lo : lo + n]
            pos += n
            k += 1
        return out

    def bincount(self, chunk_tokens: int = 1 << 24) -> np.ndarray:
        """Frequency of every token id (int64, length vocab_size), computed in chunks."""
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        for shard in self._shards:
            for lo in range(0, len(shard), chunk_tokens):
                chunk = np.asarray(shard[lo : lo + chunk_tokens])
                counts += np.bincount(chunk, minlength=self.vocab_size)[: self.vocab_size]
        return counts


def verify(dir: str | Path) -> list[str]:
    """Recompute sizes and checksums of every shard; return the problems found (empty = ok)."""
    from scaletrain.data.tokenizer import load_tokenizer, tokenizer_fingerprint

    dir = Path(dir)
    try:
        manifest = read_manifest(dir)
    except UserError as e:
        return [str(e)]
    problems: list[str] = []
    try:
        tok_fp = tokenizer_fingerprint(load_tokenizer(dir / TOKENIZER))
        if tok_fp != manifest.get("tokenizer_fingerprint"):
            problems.append(f"{dir / TOKENIZER}: fingerprint does not match the manifest")
    except UserError as e:
        problems.append(str(e))
    tok_sum = manifest.get("tokenizer_xxh3_128")
    if tok_sum is not None and (dir / TOKENIZER).is_file() and file_xxh3(dir / TOKENIZER) != tok_sum:
        problems.append(f"{dir / TOKENIZER}: checksum mismatch")
    try:
        itemsize = _checked_dtype(manifest, dir / MANIFEST).itemsize
    except (UserError, KeyError) as e:
        return problems + [str(e) if isinstance(e, UserError) else f"{dir / MANIFEST}: missing {e}"]
    for split, entry in sorted(manifest.get("splits", {}).items()):
        for f in entry["files"]:
            for kind, size in (("bin", f["tokens"] * itemsize), ("idx", f["documents"] * 8)):
                path = dir / f[kind]
                if not path.is_file():
                    problems.append(f"{path}: missing")
                    continue
                if path.stat().st_size != size:
                    problems.append(f"{path}: {path.stat().st_size} bytes, expected {size}")
                    continue
                if file_xxh3(path) != f["xxh3_128"][kind]:
                    problems.append(f"{path}: checksum mismatch")
                elif kind == "idx" and not _idx_ok(path, f["tokens"]):
                    problems.append(f"{path}: document offsets not increasing or out of range")
                elif kind == "bin" and (bad := _ids_problem(path, np.dtype(manifest["dtype"]), int(manifest["vocab_size"]))):
                    problems.append(bad)
    return problems  # (totals against files: checked by read_manifest)


def _ids_problem(path: Path, dtype: np.dtype, vocab_size: int) -> str | None:
    """Why a shard's token ids cannot be trained on (an id the embedding does not have), or None.
    Checksums only prove the file is what its manifest says; a shard written by another tool or a
    bug can still hold ids >= vocab_size, which would end training in an IndexError."""
    if path.stat().st_size == 0:
        return None
    top = int(np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r").max())
    if top >= vocab_size:
        return f"{path}: token id {top} is outside the vocabulary (vocab_size {vocab_size})"
    return None


def _idx_ok(path: Path, tokens: int) -> bool:
    starts = np.fromfile(path, dtype=_IDX_DTYPE)
    if starts.size == 0:
        return tokens == 0
    return bool(starts[0] == 0 and np.all(np.diff(starts) >= 0) and starts[-1] <= tokens)
