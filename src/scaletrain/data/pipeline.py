"""`scaletrain prepare`: a resumable, parallel pipeline in four phases.

1. plan      inputs -> tasks (work/plan.json, with a fingerprint of the settings and inputs)
2. scan      per task, in N workers: read, clean, hash (marker work/scan/{t}.json)
3. dedup     global, in this process: exact then near duplicates, one hash partition at a time
             (marker work/dedup.json); then the tokenizer, trained once (tokenizer.json)
4. tokenize  per task, in N workers: token shards (marker work/tokenize/{t}.json)
then stats.json and manifest.json (written last: it marks the directory finished); work/ is removed.

A rerun on an unfinished directory skips every task whose marker exists; a finished directory
is refused. Outputs depend only on the tasks and settings, never on N or on scheduling.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime, timezone
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from scaletrain.atomic import check_target, new_folder, write_json_atomic
from scaletrain.data import dedup, minhash, shards, sources, stages
from scaletrain.data.clean import FILTERS
from scaletrain.data import tokenizer as tkz
from scaletrain.data.prepare_config import PrepareConfig
from scaletrain.errors import UserError

WORK = "work"
STATS = "stats.json"


def _source_specs(cfg: PrepareConfig) -> list[sources.SourceSpec]:
    out = []
    for s in cfg.sources:
        kind = sources.infer_kind(s.path or "") if s.kind == "auto" else s.kind
        out.append(sources.SourceSpec(kind, s.path, s.pattern, s.field, s.weight, s.max_bytes))
    return out


def _plan(cfg: PrepareConfig, shard: tuple[int, int]) -> dict[str, Any]:
    tasks = sources.plan_tasks(_source_specs(cfg), cfg.task_bytes)
    if not tasks:
        raise UserError("the inputs hold no files to prepare")
    h = xxhash.xxh3_128(cfg.model_dump_json().encode())
    h.update(f"shard {shard}".encode())
    for t in tasks:
        for f in t.files:
            st = os.stat(f)
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0{t.start}\0{t.stop}\n".encode())
    i, n = shard
    # Contiguous blocks: machine i gets tasks [i*T/n, (i+1)*T/n); ids stay global task indices.
    mine = [t for t in tasks if t.index * n // len(tasks) == i]
    return {"fingerprint": h.hexdigest(), "shard": f"{i}/{n}",
            "tasks": [t.__dict__ for t in mine]}


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled)


def _run(fn: Callable, tasks: list[sources.Task], done: Callable[[sources.Task], bool],
         pool: ProcessPoolExecutor | None, bar: Progress, label: str) -> None:
    todo = [t for t in tasks if not done(t)]
    pt = bar.add_task(label, total=len(tasks), completed=len(tasks) - len(todo))
    if pool is None:
        stages.init_worker()
        for t in todo:
            fn(t)
            bar.advance(pt)
        return
    futures = [pool.submit(fn, t) for t in todo]
    try:
        for fut in as_completed(futures):
            fut.result()
            bar.advance(pt)
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise


def _check_out(out: Path) -> None:
    """Refuse an --out that cannot become the output folder, before anything is written."""
    check_target(out, "--out", folder=True)


def _check_tokenizer(cfg: PrepareConfig) -> None:
    """--tokenizer is read only in the third phase: a missing or corrupt file is found now."""
    if cfg.tokenizer is not None:
        try:
            tkz.eot_id(tkz.load_tokenizer(cfg.tokenizer))
        except UserError as exc:
            raise UserError(f"--tokenizer: {exc}") from None


def _check_documents(cfg: PrepareConfig, work: Path, tasks: list[sources.Task], plan_shard: str) -> None:
    """Bad input that only reading shows: a source that yields no document at all (a 0-byte file,
    a JSONL field that is never a string), or nothing left after cleaning. Training on the
    result would "finish" on 0 tokens."""
    read: dict[int, int] = {}
    kept = 0
    skipped: dict[int, Counter] = {}
    removed: Counter = Counter()
    for t in tasks:
        scan = json.loads(stages.scan_paths(work, t.index)["json"].read_text())
        read[t.source] = read.get(t.source, 0) + scan["documents_in"]
        skipped.setdefault(t.source, Counter()).update(scan["skipped"])
        removed.update(scan["removed"])
        kept += scan["documents_kept"]
    specs = _source_specs(cfg)
    for i, n in sorted(read.items()):
        if n == 0 and plan_shard == "0/1":  # (one machine's share of a source may hold only bad lines)
            spec = specs[i]
            field = f", field {spec.field!r}" if spec.kind in ("jsonl", "parquet") else ""
            why = ", ".join(f"{v} {k}" for k, v in sorted(skipped[i].items())) or "nothing"
            raise UserError(f"source {spec.path or 'stdlib'}: no document in it ({spec.kind}{field}; "
                            f"skipped: {why})")
    if kept == 0:
        why = ", ".join(f"{v} {k}" for k, v in sorted(removed.items()) if v)
        raise UserError(f"no document is left after cleaning (removed: {why}); relax the clean settings" if why
                        else f"this share ({plan_shard}) of the inputs holds no document")


def _resuming(out: Path, plan: dict[str, Any]) -> bool:
    """Whether `out` is an unfinished run of this plan to resume; UserError when `out` cannot be
    used (finished, another run's, or holding other files). Reads only."""
    if (out / shards.MANIFEST).exists():
        raise UserError(f"--out: {out} holds a finished preparation (manifest.json); choose a new directory")
    plan_file = out / WORK / "plan.json"
    if plan_file.is_file():
        old = json.loads(plan_file.read_text())
        if old.get("fingerprint") != plan["fingerprint"]:
            raise UserError(f"--out: {out} holds an unfinished run with other settings or inputs; "
                            "rerun the same command to resume it, or choose a new directory")
        return True
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out: {out} exists and is not an unfinished preparation; choose a new directory")
    return False


def _open_out(out: Path, plan: dict[str, Any], resumed: bool) -> None:
    if not resumed:
        write_json_atomic(out / WORK / "plan.json", plan)  # first: a directory with work/ is always resumable
    (out / WORK / "scan").mkdir(parents=True, exist_ok=True)
    (out / WORK / "tokenize").mkdir(parents=True, exist_ok=True)


def run_prepare(cfg: PrepareConfig, out: str | Path, workers: int | None = None,
                shard: tuple[int, int] = (0, 1), progress: bool = True) -> dict[str, Any]:
    """Prepare `cfg`'s sources into `out`; returns the stats written to out/stats.json."""
    t0 = time.perf_counter()
    out = Path(out)
    workers = workers or os.cpu_count() or 1
    if shard[1] > 1 and cfg.tokenizer is None:
        raise UserError("--shard i/n with n > 1 needs --tokenizer (one vocabulary for every machine)")
    # Everything that can be checked before reading the inputs is, before anything is written.
    _check_out(out)
    _check_tokenizer(cfg)
    plan = _plan(cfg, shard)
    resumed = _resuming(out, plan)
    # Bad input found while reading it (a source with no document): a new start leaves nothing
    # behind. Any other stop (a crash, Ctrl-C) keeps work/ to resume from.
    with contextlib.nullcontext() if resumed else new_folder(out, undo_on=UserError):
        _open_out(out, plan, resumed)
        return _prepare(cfg, out, plan, workers, resumed, progress, t0)


def _prepare(cfg: PrepareConfig, out: Path, plan: dict[str, Any], workers: int, resumed: bool,
             progress: bool, t0: float) -> dict[str, Any]:
    work = out / WORK
    tasks = [sources.Task(**{**t, "files": tuple(t["files"]), "rel": tuple(t["rel"])}) for t in plan["tasks"]]
    # The tokenizer is trained in this process; its Rust pool may use every worker's core.
    os.environ.setdefault("RAYON_NUM_THREADS", str(workers))
    # One pool for both parallel phases: spawning workers costs about a second each time.
    # More processes than tasks would only add start-up time.
    procs = min(workers, len(tasks))
    pool = (ProcessPoolExecutor(procs, mp_context=get_context("spawn"), initializer=stages.init_worker)
            if procs > 1 else None)
    phase: dict[str, float] = {}  # seconds of this invocation per phase: where the time goes
    try:
        with _progress(progress) as bar:
            t = time.perf_counter()
            _run(partial(stages.scan, cfg, work), tasks,
                 lambda t: stages.scan_paths(work, t.index)["json"].is_file(), pool, bar, "scan + hash")
            phase["scan"], t = time.perf_counter() - t, time.perf_counter()
            _check_documents(cfg, work, tasks, plan["shard"])
            if not (work / "dedup.json").is_file():
                pt = bar.add_task("dedup", total=None)
                _decide(cfg, work, tasks)
                bar.update(pt, total=1, completed=1)
            phase["dedup"], t = time.perf_counter() - t, time.perf_counter()
            if not (out / shards.TOKENIZER).is_file():
                pt = bar.add_task("tokenizer", total=None)
                _tokenizer(cfg, out, work, tasks)
                bar.update(pt, total=1, completed=1)
            phase["tokenizer"], t = time.perf_counter() - t, time.perf_counter()
            _run(partial(stages.tokenize, cfg, out, work), tasks,
                 lambda t: (work / "tokenize" / f"{t.index:05d}.json").is_file(), pool, bar, "tokenize")
            phase["tokenize"] = time.perf_counter() - t
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    scans = [json.loads(stages.scan_paths(work, t.index)["json"].read_text()) for t in tasks]
    toks = [json.loads((work / "tokenize" / f"{t.index:05d}.json").read_text()) for t in tasks]
    stats = _finish(cfg, out, work, plan, tasks, scans, toks)
    stats.update(seconds=round(time.perf_counter() - t0, 3), workers=workers, resumed=resumed,
                 phase_seconds={k: round(v, 3) for k, v in phase.items()},
                 created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_json_atomic(out / STATS, stats)
    shards.write_manifest(out, _manifest(cfg, out, plan, tasks, scans, toks))  # with its own checksum
    shutil.rmtree(work, ignore_errors=True)
    return stats


def _decide(cfg: PrepareConfig, work: Path, tasks: list[sources.Task]) -> None:
    """Global dedup decisions and the train/val overrides; work/dedup.json written last."""
    d = cfg.dedup
    parts = [stages.scan_paths(work, t.index)["parts.npz"] for t in tasks]
    exact = dedup.exact_duplicates(parts, d.partitions) if d.exact else np.empty(0, np.uint64)
    near, pair_counts = np.empty(0, np.uint64), {"candidate_pairs": 0, "verified_pairs": 0}
    if d.near:
        threshold = d.threshold if d.threshold is not None else minhash.threshold(d.bands, d.rows)
        near, pair_counts = dedup.near_duplicates(parts, d.partitions, exact, threshold,
                                                  partial(_signatures, work))
    removed = np.union1d(exact, near).astype(np.uint64)
    overrides = _split_overrides(cfg, work, tasks, removed)
    np.save(work / "removed.npy", removed)
    write_json_atomic(work / "dedup.json", {"exact_dedup": int(len(exact)), "near_dedup": int(len(near)),
                                            **pair_counts, "overrides": overrides})


def _signatures(work: Path, ids: np.ndarray) -> np.ndarray:
    """Signature rows of sorted doc ids, read from each task's memory-mapped signature file."""
    rows = []
    task_of = ids >> dedup.TASK_SHIFT
    for t in np.unique(task_of):
        sig = np.load(stages.scan_paths(work, int(t))["sig.npy"], mmap_mode="r")
        local = (ids[task_of == t] & np.uint64(0xFFFFFFFF)).astype(np.int64)
        rows.append(np.asarray(sig[local]))
    return np.concatenate(rows)


def _kept_meta(work: Path, tasks: list[sources.Task], removed: np.ndarray, key: str):
    """(ids, values of `key`, utf-8 sizes) of the documents that survive cleaning and dedup."""
    for t in tasks:
        with np.load(stages.scan_paths(work, t.index)["meta.npz"]) as z:
            values, offsets = z[key], z["offsets"]
        ids = dedup.doc_ids(t.index, len(values))
        keep = ~np.isin(ids, removed)
        yield t, ids[keep], values[keep], np.diff(offsets)[keep]


def _split_overrides(cfg: PrepareConfig, work: Path, tasks: list[sources.Task],
                     removed: np.ndarray) -> dict[str, str]:
    """A tiny corpus can hash entirely to one split; neither split may then be empty."""
    if cfg.val_fraction == 0:
        return {}
    best_val = best_train = None  # (split_u, id)
    n_val = n_train = 0
    for _, ids, u, _ in _kept_meta(work, tasks, removed, "split_u"):
        val = u < cfg.val_fraction
        n_val += int(val.sum())
        n_train += int((~val).sum())
        if len(u):
            i, j = int(np.argmin(u)), int(np.argmax(u))
            if best_val is None or u[i] < best_val[0]:
                best_val = (float(u[i]), int(ids[i]))
            if best_train is None or u[j] > best_train[0]:
                best_train = (float(u[j]), int(ids[j]))
    if n_val + n_train < 2:
        return {}
    if n_val == 0:
        return {str(best_val[1]): "val"}
    if n_train == 0:
        return {str(best_train[1]): "train"}
    return {}


def _tokenizer(cfg: PrepareConfig, out: Path, work: Path, tasks: list[sources.Task]) -> None:
    if cfg.tokenizer is not None:
        tok = tkz.load_tokenizer(cfg.tokenizer)
        tkz.save_tokenizer(tok, out / shards.TOKENIZER)
        return
    removed = np.load(work / "removed.npy")
    overrides = json.loads((work / "dedup.json").read_text())["overrides"]
    total = 0
    for _, ids, u, sizes in _kept_meta(work, tasks, removed, "split_u"):
        total += int(sizes[u >= cfg.val_fraction].sum())
    # A deterministic sample spread over the whole corpus, not its first files.
    rate = min(1.0, cfg.tokenizer_sample_bytes / max(total, 1))

    def texts():
        for t, ids, _, _ in _kept_meta(work, tasks, removed, "split_u"):
            p = stages.scan_paths(work, t.index)
            with np.load(p["meta.npz"]) as z:
                offsets, split_u, sample_u = z["offsets"], z["split_u"], z["sample_u"]
            blob = p["txt"].read_bytes()
            for doc in ids:
                i = int(doc & 0xFFFFFFFF)
                val = overrides.get(str(int(doc)), "val" if split_u[i] < cfg.val_fraction else "train")
                if val == "train" and sample_u[i] < rate:
                    yield blob[offsets[i] : offsets[i + 1]].decode("utf-8")

    tok = tkz.train_tokenizer(texts(), cfg.vocab_size)
    tkz.save_tokenizer(tok, out / shards.TOKENIZER)


def _finish(cfg, out, work, plan, tasks, scans, toks) -> dict[str, Any]:
    decisions = json.loads((work / "dedup.json").read_text())
    # Every enabled filter gets a key, also when it removed nothing.
    removed: Counter = Counter({name: 0 for name in FILTERS if getattr(cfg.clean, name) is not None})
    skipped, repaired = Counter(), Counter()
    for s in scans:
        removed.update(s["removed"])
        skipped.update(s["skipped"])
        repaired.update(s["repaired"])
    removed["exact_dedup"] = decisions["exact_dedup"]
    removed["near_dedup"] = decisions["near_dedup"]
    split_totals = {}
    for split in ("train", "val"):
        entries = [t["splits"][split] for t in toks]
        split_totals[split] = {k: sum(e[k] for e in entries)
                               for k in ("tokens", "documents", "unique_documents", "bytes")}
    documents_in = sum(s["documents_in"] for s in scans)
    return {
        "documents_in": documents_in,
        "documents_out": sum(v["unique_documents"] for v in split_totals.values()),
        "documents_written": sum(v["documents"] for v in split_totals.values()),
        "removed": dict(removed),
        "skipped": dict(skipped),
        "repaired": dict(repaired),
        "tokens": sum(v["tokens"] for v in split_totals.values()),
        "bytes_in": sum(s["bytes_in"] for s in scans),
        "bytes": sum(v["bytes"] for v in split_totals.values()),
        "splits": split_totals,
        "near_dedup_pairs": {"candidate": decisions["candidate_pairs"], "verified": decisions["verified_pairs"]},
        "tasks": len(tasks),
        "shard": plan["shard"],
    }


def _manifest(cfg, out, plan, tasks, scans, toks) -> dict[str, Any]:
    tok = tkz.load_tokenizer(out / shards.TOKENIZER)
    splits = {}
    for split in ("train", "val"):
        entries = [t["splits"][split] for t in toks]
        splits[split] = {"files": [f for e in entries for f in e["files"]],
                         "tokens": sum(e["tokens"] for e in entries),
                         "documents": sum(e["documents"] for e in entries),
                         "bytes": sum(e["bytes"] for e in entries)}
    source_fps = []
    for i, s in enumerate(cfg.sources):
        h = xxhash.xxh3_128()
        for sc in scans:
            if sc["source"] == i:
                h.update(sc["raw_xxh3_128"].encode())
        source_fps.append({**s.model_dump(), "tasks": sum(t.source == i for t in tasks),
                           "xxh3_128": h.hexdigest()})
    vocab = tok.get_vocab_size()
    return {
        "schema_version": shards.SCHEMA_VERSION,
        "dtype": shards.token_dtype(vocab).name,
        "vocab_size": vocab,
        "eot_id": tkz.eot_id(tok),
        "tokenizer_fingerprint": tkz.tokenizer_fingerprint(tok),
        "tokenizer_xxh3_128": shards.file_xxh3(out / shards.TOKENIZER),
        "inputs_fingerprint": plan["fingerprint"],
        "sources": source_fps,
        "shard": plan["shard"],
        "prepare": cfg.model_dump(mode="json"),
        "splits": splits,
    }
