"""The per-task stages of `scaletrain prepare`, run in worker processes (local pool or Ray).

scan(task):     read -> normalize -> filter -> exact hash, MinHash -> work/scan/{t}.*
                (and the task's share of the tokenizer sample's candidates, in meta.npz)
tokenize(task): cleaned text minus dedup removals -> train/val split -> mixture copies ->
                token ids -> {split}-{t}_{k}.bin/.idx

Every output of a task depends only on the task, the settings and the global decisions, so the
result is the same whichever worker runs it, and a task can be redone after a crash. Each stage
writes its data files atomically and its JSON marker last.
"""
from __future__ import annotations

import json
import os
import resource
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from scaletrain.atomic import atomic_open, write_json_atomic
from scaletrain.data import dedup, minhash, shards, sources
from scaletrain.data.clean import Cleaner, CleanSpec
from scaletrain.data.prepare_config import PrepareConfig

_ENCODE_BATCH_BYTES = 2 << 20
_SEED_SPLIT, _SEED_MIX, _SEED_SAMPLE = 1, 2, 3


def unit_hash(doc_id: str, seed: int, salt: int) -> float:
    """A deterministic uniform draw in [0, 1) per document id."""
    return xxhash.xxh64_intdigest(doc_id.encode("utf-8", "surrogatepass"), seed=seed * 16 + salt) / 2.0**64


def scan_paths(work: Path, t: int) -> dict[str, Path]:
    base = work / "scan" / f"{t:05d}"
    return {k: base.with_suffix(f".{k}") for k in ("txt", "meta.npz", "sig.npy", "parts.npz", "json")}


WORKER_ENV = {"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
FAULT = "SCALETRAIN_DATA_FAULT"


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def scan_done(work: Path, task: int) -> bool:
    """The task's marker is there and every file it lists has the size it noted."""
    p = scan_paths(work, task)
    try:
        sizes = json.loads(p["json"].read_text())["sizes"]
        return all(p[k].stat().st_size == n for k, n in sizes.items())
    except (OSError, ValueError, KeyError):
        return False


def tokenize_done(out: Path, work: Path, task: int) -> bool:
    """The task's marker is there and every shard it lists has its size (tokens and documents)."""
    try:
        result = json.loads((work / "tokenize" / f"{task:05d}.json").read_text())
        itemsize = np.dtype(result["dtype"]).itemsize
        return all((out / f["bin"]).stat().st_size == f["tokens"] * itemsize
                   and (out / f["idx"]).stat().st_size == f["documents"] * 8
                   for entry in result["splits"].values() for f in entry["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def init_worker(fault: str = "") -> None:
    """One Rust thread per worker process: N processes are the parallelism, not N x threads (read
    once by the tokenizer's thread pool, at its first use: before any stage runs). `fault`: the
    driver's SCALETRAIN_DATA_FAULT (a worker's environment may be older than the run)."""
    os.environ.update(WORKER_ENV)
    if fault:
        os.environ[FAULT] = fault
    else:
        os.environ.pop(FAULT, None)


def maybe_fault(stage: str, work: Path, task: int) -> None:
    """A test hook, not a setting: `SCALETRAIN_DATA_FAULT=kill:stage=tokenize:task=1` SIGKILLs the
    worker process that starts that stage of that task, once per run (a marker, in work/ or at
    `:marker=PATH`, says it fired, so the retry runs clean): what a machine lost mid-run looks like
    to the engine."""
    spec = os.environ.get(FAULT)
    if not spec:
        return
    kind, *fields = spec.split(":")
    args = dict(f.split("=", 1) for f in fields if "=" in f)
    if kind != "kill" or args.get("stage") != stage or int(args.get("task", -1)) != task:
        return
    try:
        fd = os.open(args.get("marker") or work / f"fault-{stage}-{task}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def scan(cfg: PrepareConfig, work: Path, task: sources.Task, sample_rate: float = 0.0) -> dict[str, Any]:
    """`sample_rate`: training documents whose sample hash falls below it are the tokenizer
    sample's candidates (indices and byte ranges kept in meta.npz; the driver picks among them)."""
    maybe_fault("scan", work, task.index)
    src = cfg.sources[task.source]
    c = cfg.clean
    cleaner = Cleaner(CleanSpec(None if c.normalize == "none" else c.normalize, c.min_chars,
                                c.max_chars, c.max_line_chars, c.max_non_alnum_fraction,
                                c.max_repeated_line_fraction))
    skipped, repaired, removed = Counter(), Counter(), Counter()
    raw = xxhash.xxh3_128()
    n_in = 0
    blobs: list[bytes] = []
    texts: list[str] = []
    split_u, sample_u, copies = [], [], []
    for doc in sources.read_task(task, src.field, cfg.max_doc_bytes, cfg.undecodable,
                                 skipped, repaired, raw):
        n_in += 1
        text, reason = cleaner.apply(doc.text)
        if reason is not None:
            removed[reason] += 1
            continue
        # Lone surrogates (possible in JSON) cannot be UTF-8; "replace" keeps the rest.
        blobs.append(text.encode("utf-8", "replace"))
        texts.append(text)
        split_u.append(unit_hash(doc.id, cfg.seed, _SEED_SPLIT))
        sample_u.append(unit_hash(doc.id, cfg.seed, _SEED_SAMPLE))
        # Mixture: floor(w) copies plus one more with probability frac(w), drawn per document.
        w = src.weight
        copies.append(int(w) + (unit_hash(doc.id, cfg.seed, _SEED_MIX) < w - int(w)))
    p = scan_paths(work, task.index)
    offsets = np.cumsum([0] + [len(b) for b in blobs], dtype=np.int64)
    # work/ is scratch: atomic (a reader sees all or nothing) but not fsynced; the marker notes
    # every file's size, so a resume after a power loss redoes a task whose files came back short.
    with atomic_open(p["txt"], "wb", durable=False) as f:
        f.write(b"".join(blobs))
    split_u, sample_u = np.array(split_u, np.float64), np.array(sample_u, np.float64)
    candidates = np.flatnonzero((sample_u < sample_rate) & (split_u >= cfg.val_fraction))
    with atomic_open(p["meta.npz"], "wb", durable=False) as f:
        np.savez(f, offsets=offsets, split_u=split_u, sample_u=sample_u, copies=np.array(copies, np.uint32),
                 sample_index=candidates.astype(np.int64), sample_key=sample_u[candidates])
    d = cfg.dedup
    exact = dedup.exact_hashes(blobs) if d.exact else None
    bands = has = None
    if d.near:
        hasher = minhash.MinHasher(d.bands, d.rows, d.seed)
        sets = [minhash.shingles(t, d.ngram) for t in texts]
        sig = hasher.signatures(sets)
        bands = hasher.band_hashes(sig)
        has = np.array([s.size > 0 for s in sets], dtype=bool)
        with atomic_open(p["sig.npy"], "wb", durable=False) as f:
            np.save(f, sig)
    dedup.write_partitions(p["parts.npz"], task.index, exact, bands, has, d.partitions)
    n_val = int((split_u < cfg.val_fraction).sum())
    result = {"task": task.index, "source": task.source, "documents_in": n_in,
              "documents_kept": len(blobs), "val_documents": n_val, "train_documents": len(blobs) - n_val,
              # Rows each task gives the global dedup (24 bytes each): what the Ray engine shuffles.
              "dedup_rows": {"exact": 0 if exact is None else len(exact),
                             "band": 0 if bands is None else int(has.sum()) * d.bands},
              "bytes_in": int(offsets[-1]), "removed": dict(removed),
              "skipped": dict(skipped), "repaired": dict(repaired), "raw_xxh3_128": raw.hexdigest()}
    result["sizes"] = {k: p[k].stat().st_size for k in ("txt", "meta.npz", "sig.npy", "parts.npz") if p[k].is_file()}
    result["peak_rss_bytes"] = peak_rss()
    write_json_atomic(p["json"], result, durable=False)
    return result


def signature_rows(work: Path, ids: np.ndarray) -> np.ndarray:
    """MinHash signature rows of sorted doc ids, read from each task's memory-mapped signatures."""
    rows = []
    task_of = ids >> dedup.TASK_SHIFT
    for t in np.unique(task_of):
        sig = np.load(scan_paths(work, int(t))["sig.npy"], mmap_mode="r")
        local = (ids[task_of == t] & np.uint64(0xFFFFFFFF)).astype(np.int64)
        rows.append(np.asarray(sig[local]))
    return np.concatenate(rows) if rows else np.empty((0, 0), np.uint32)


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(path: Path):
    from scaletrain.data.tokenizer import load_tokenizer

    st = path.stat()
    key = f"{path}:{st.st_mtime_ns}:{st.st_size}"  # a rewritten file is a new tokenizer
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = load_tokenizer(path)
    return _TOKENIZERS[key]


def tokenize(cfg: PrepareConfig, out: Path, work: Path, task: sources.Task) -> dict[str, Any]:
    from scaletrain.data.tokenizer import eot_id

    maybe_fault("tokenize", work, task.index)
    tok = _tokenizer(out / shards.TOKENIZER)
    dtype = shards.token_dtype(tok.get_vocab_size())
    eot = eot_id(tok, cfg.eot)
    p = scan_paths(work, task.index)
    blob = p["txt"].read_bytes()
    with np.load(p["meta.npz"]) as z:
        offsets, split_u, copies = z["offsets"], z["split_u"], z["copies"]
    decisions = json.loads((work / "dedup.json").read_text())
    removed = np.load(work / "removed.npy")
    mine = removed[(removed >> dedup.TASK_SHIFT) == np.uint64(task.index)]
    keep = np.ones(len(split_u), dtype=bool)
    keep[(mine & np.uint64(0xFFFFFFFF)).astype(np.int64)] = False
    is_val = split_u < cfg.val_fraction
    for doc_id, split in decisions["overrides"].items():
        if int(doc_id) >> 32 == task.index:
            is_val[int(doc_id) & 0xFFFFFFFF] = split == "val"
    entries = {}
    for split in ("train", "val"):
        # Mixture weights shape training only; validation stays one copy per document.
        order = np.flatnonzero(keep & (is_val if split == "val" else ~is_val))
        reps = np.ones(len(order), np.int64) if split == "val" else copies[order].astype(np.int64)
        nbytes = int(((offsets[order + 1] - offsets[order]) * reps).sum())
        docs = _encoded(tok, blob, offsets, order, reps, dtype, eot)
        entries[split] = shards.write_split(out, split, docs, dtype, shard_tokens=cfg.shard_tokens,
                                            source_bytes=nbytes, prefix=f"{split}-{task.index:05d}",
                                            durable=False)  # made durable together, before the manifest
        entries[split]["unique_documents"] = int(len(order))
    result = {"task": task.index, "dtype": dtype.name, "splits": entries, "peak_rss_bytes": peak_rss()}
    write_json_atomic(work / "tokenize" / f"{task.index:05d}.json", result, durable=False)
    return result


def _encoded(tok, blob: bytes, offsets: np.ndarray, order: np.ndarray, reps: np.ndarray,
             dtype: np.dtype, eot: int):
    """Token arrays (each ending with EOT), `reps[i]` copies of document `order[i]`, in order."""
    lo = 0
    while lo < len(order):
        hi, size = lo, 0
        while hi < len(order) and (hi == lo or size < _ENCODE_BATCH_BYTES):
            size += int(offsets[order[hi] + 1] - offsets[order[hi]])
            hi += 1
        texts = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in order[lo:hi]]
        for k, enc in enumerate(tok.encode_batch_fast(texts)):
            raw = enc.ids
            ids = np.empty(len(raw) + 1, dtype=dtype)
            ids[:-1] = raw
            ids[-1] = eot
            for _ in range(int(reps[lo + k])):
                yield ids
        lo = hi
