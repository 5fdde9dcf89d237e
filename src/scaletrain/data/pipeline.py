"""`scaletrain prepare`: a resumable, parallel pipeline in four phases, on one of two engines.

1. plan      inputs -> tasks (work/plan.json, with a fingerprint of the settings and inputs)
2. scan      per task, in N workers: read, clean, hash (marker work/scan/{t}.json); each task also
             notes its candidates for the tokenizer sample
3. dedup     global: exact then near duplicates (marker work/dedup.json); then the tokenizer,
             trained once, on all cores, on a bounded sample (tokenizer.json)
4. tokenize  per task, in N workers: token shards (marker work/tokenize/{t}.json)
then stats.json and manifest.json (written last: it marks the directory finished); work/ is removed.

Engines: `local` (`local_engine.py`: a process pool; dedup reads hash partitions one at a time)
and `ray` (`ray_engine.py`: the same stage functions as Ray Data maps, dedup grouped by key with
Ray's shuffle, over a cluster). Both run the same stages and take the same decisions, so the
output is byte-identical.

A rerun on an unfinished directory skips every task whose marker exists; a finished directory
is refused. Outputs depend only on the tasks and settings, never on N, the engine or scheduling.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections import Counter
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from scaletrain.atomic import check_target, fsync_files, new_folder, write_json_atomic
from scaletrain.data import dedup, minhash, shards, sources, stages
from scaletrain.data.clean import FILTERS
from scaletrain.data import tokenizer as tkz
from scaletrain.data.prepare_config import PrepareConfig, task_size, tokenizer_sample_size
from scaletrain.errors import UserError

# Bump when a change of the recipe changes the output for the same settings: the plan's
# fingerprint (and so the trainer's cache key) changes with it.
RECIPE_VERSION = 2
ENGINES = ("local", "ray")
SAMPLE_OVERDRAW = 2  # the scan notes twice the tokenizer sample's share; the driver cuts at the bound
WORK = "work"
STATS = "stats.json"


def _source_specs(cfg: PrepareConfig) -> list[sources.SourceSpec]:
    out = []
    for s in cfg.sources:
        kind = sources.infer_kind(s.path or "", s.pattern) if s.kind == "auto" else s.kind
        out.append(sources.SourceSpec(kind, s.path, s.pattern, s.field, s.weight, s.max_bytes))
    return out


def source_kinds(cfg: PrepareConfig) -> list[str]:
    """Each source's kind, `auto` resolved (by extension, or a directory's pattern)."""
    return [s.kind for s in _source_specs(cfg)]


def plan(cfg: PrepareConfig, shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """The tasks of this machine's share and a fingerprint of everything the output depends on:
    the settings, the recipe and library versions, and every input file's path, size and mtime."""
    import tokenizers

    tasks = sources.plan_tasks(_source_specs(cfg), partial(task_size, cfg))
    if not tasks:
        raise UserError("the inputs hold no files to prepare")
    h = xxhash.xxh3_128(cfg.model_dump_json().encode())
    h.update(f"shard {shard} recipe {RECIPE_VERSION} tokenizers {tokenizers.__version__}".encode())
    if cfg.tokenizer is not None:  # what the given tokenizer is, not only where it lies
        h.update(shards.file_xxh3(Path(cfg.tokenizer)).encode())
    for t in tasks:
        for f in t.files:
            st = os.stat(f)
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0{t.start}\0{t.stop}\n".encode())
    i, n = shard
    # Contiguous blocks: machine i gets tasks [i*T/n, (i+1)*T/n); ids stay global task indices.
    mine = [t for t in tasks if t.index * n // len(tasks) == i]
    # The scan notes the documents whose sample hash falls below this rate: about SAMPLE_OVERDRAW
    # times the tokenizer sample (estimated from the planned input bytes), cut exactly later.
    planned = sum(t.nbytes for t in mine)
    rate = 0.0 if cfg.tokenizer else min(1.0, SAMPLE_OVERDRAW * tokenizer_sample_size(cfg) / max(planned, 1))
    return {"fingerprint": h.hexdigest(), "shard": f"{i}/{n}", "sample_rate": rate,
            "tasks": [t.__dict__ for t in mine]}


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled)


def _run(engine, fn, tasks: list[sources.Task], done, bar: Progress, label: str) -> None:
    todo = [t for t in tasks if not done(t)]
    pt = bar.add_task(label, total=len(tasks), completed=len(tasks) - len(todo))
    engine.run(fn, todo, lambda: bar.advance(pt))


def _check_out(out: Path) -> None:
    """Refuse an --out that cannot become the output folder, before anything is written."""
    check_target(out, "--out", folder=True)


def _check_tokenizer(cfg: PrepareConfig) -> None:
    """--tokenizer is read only in the third phase: a missing or corrupt file is found now."""
    if cfg.tokenizer is not None:
        try:
            tkz.eot_id(tkz.load_tokenizer(cfg.tokenizer), cfg.eot)
        except UserError as exc:
            raise UserError(f"--tokenizer: {exc}") from None


def _check_documents(cfg: PrepareConfig, scans: list[dict], tasks: list[sources.Task], plan_shard: str) -> None:
    """Bad input that only reading shows: a source that yields no document at all (a 0-byte file,
    a JSONL field that is never a string), or nothing left after cleaning. Training on the
    result would "finish" on 0 tokens."""
    read: dict[int, int] = {}
    kept = 0
    skipped: dict[int, Counter] = {}
    removed: Counter = Counter()
    for t, scan in zip(tasks, scans):
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
                shard: tuple[int, int] = (0, 1), progress: bool = True, engine: str = "local",
                ray_address: str | None = None) -> dict[str, Any]:
    """Prepare `cfg`'s sources into `out`; returns the stats written to out/stats.json.
    `engine="ray"` runs the stages on Ray (a local Ray of `workers` CPUs, or the cluster at
    `ray_address` / $RAY_ADDRESS, whose nodes must all see `out`)."""
    t0 = time.perf_counter()
    out = Path(out)
    if engine not in ENGINES:
        raise UserError(f"--engine: one of {', '.join(ENGINES)}, got {engine!r}")
    if shard[1] > 1 and cfg.tokenizer is None:
        raise UserError("--shard i/n with n > 1 needs --tokenizer (one vocabulary for every machine)")
    # Everything that can be checked before reading the inputs is, before anything is written.
    _check_out(out)
    _check_tokenizer(cfg)
    runner = None
    try:
        if engine == "ray":
            from scaletrain.data.ray_engine import RayEngine

            runner = RayEngine(workers, ray_address)  # a missing `ray` is found before the inputs are read
        work_plan = plan(cfg, shard)
        resumed = _resuming(out, work_plan)
        if engine == "local":
            from scaletrain.data.local_engine import LocalEngine

            runner = LocalEngine(workers or os.cpu_count() or 1, len(work_plan["tasks"]))
        # Bad input found while reading it (a source with no document): a new start leaves nothing
        # behind. Any other stop (a crash, Ctrl-C) keeps work/ to resume from.
        with contextlib.nullcontext() if resumed else new_folder(out, undo_on=UserError):
            _open_out(out, work_plan, resumed)
            return _prepare(cfg, out, work_plan, runner, resumed, progress, t0)
    finally:
        if runner is not None:
            runner.close()


def _prepare(cfg: PrepareConfig, out: Path, plan: dict[str, Any], engine, resumed: bool,
             progress: bool, t0: float) -> dict[str, Any]:
    work = out / WORK
    tasks = [sources.Task(**{**t, "files": tuple(t["files"]), "rel": tuple(t["rel"])}) for t in plan["tasks"]]
    # The tokenizer is trained in this process while the workers wait: its Rust pool gets their
    # cores (workers x tokenizer threads never exceed the cores; each worker runs one thread).
    os.environ.setdefault("RAYON_NUM_THREADS", str(engine.workers))
    phase: dict[str, float] = {}  # seconds of this invocation per phase: where the time goes
    with _progress(progress) as bar:
        t = time.perf_counter()
        _run(engine, partial(stages.scan, cfg, work, sample_rate=plan["sample_rate"]), tasks,
             lambda t: stages.scan_done(work, t.index), bar, "scan + hash")
        phase["scan"], t = time.perf_counter() - t, time.perf_counter()
        scans = [json.loads(stages.scan_paths(work, t.index)["json"].read_text()) for t in tasks]
        _check_documents(cfg, scans, tasks, plan["shard"])
        if not (work / "dedup.json").is_file():
            pt = bar.add_task("dedup", total=None)
            _decide(cfg, work, tasks, scans, engine)
            bar.update(pt, total=1, completed=1)
        phase["dedup"], t = time.perf_counter() - t, time.perf_counter()
        if not (out / shards.TOKENIZER).is_file():
            pt = bar.add_task("tokenizer", total=None)
            _tokenizer(cfg, out, work, tasks)
            bar.update(pt, total=1, completed=1)
        phase["tokenizer"], t = time.perf_counter() - t, time.perf_counter()
        _run(engine, partial(stages.tokenize, cfg, out, work), tasks,
             lambda t: stages.tokenize_done(out, work, t.index), bar, "tokenize")
        phase["tokenize"] = time.perf_counter() - t
    toks = [json.loads((work / "tokenize" / f"{t.index:05d}.json").read_text()) for t in tasks]
    stats = _finish(cfg, out, work, plan, tasks, scans, toks)
    stats["work_bytes"] = _work_bytes(work, tasks)
    # The largest worker process (this one when the tasks ran here): memory per worker.
    stats["worker_peak_rss_bytes"] = max(r.get("peak_rss_bytes", 0) for r in scans + toks)
    stats.update(seconds=round(time.perf_counter() - t0, 3), engine=engine.name, workers=engine.workers,
                 resumed=resumed, phase_seconds={k: round(v, 3) for k, v in phase.items()},
                 created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_json_atomic(out / STATS, stats)
    manifest = _manifest(cfg, out, plan, tasks, scans, toks)
    _remove_strays(out, manifest)
    # The shards were written without an fsync each (that would put the disk on every task's
    # path): all of them are made durable here, at once, before the manifest that vouches for them.
    fsync_files([out / f[kind] for entry in manifest["splits"].values() for f in entry["files"]
                 for kind in ("bin", "idx")])
    shards.write_manifest(out, manifest)  # with its own checksum
    shutil.rmtree(work, ignore_errors=True)
    return stats


def _work_bytes(work: Path, tasks: list[sources.Task]) -> dict[str, int]:
    """Bytes of the intermediate files, by kind: what one pass writes besides the shards."""
    kinds = {"txt": "text", "sig.npy": "signatures", "parts.npz": "dedup_rows", "meta.npz": "meta"}
    sizes = dict.fromkeys(kinds.values(), 0)
    for t in tasks:
        for key, path in stages.scan_paths(work, t.index).items():
            if key in kinds and path.is_file():
                sizes[kinds[key]] += path.stat().st_size
    return sizes


def _remove_strays(out: Path, manifest: dict[str, Any]) -> None:
    """Temp files a killed worker left in `out` (its retry wrote the real file under another
    temp name): the finished folder holds what its manifest lists, nothing else of ours."""
    for p in out.iterdir():
        if p.is_file() and p.name.startswith(".") and p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)


def _decide(cfg: PrepareConfig, work: Path, tasks: list[sources.Task], scans: list[dict], engine) -> None:
    """Global dedup decisions and the train/val overrides; work/dedup.json written last."""
    d = cfg.dedup
    parts = [stages.scan_paths(work, t.index)["parts.npz"] for t in tasks]
    exact = engine.exact_duplicates(parts, d.partitions) if d.exact else np.empty(0, np.uint64)
    near, pair_counts = np.empty(0, np.uint64), {"candidate_pairs": 0, "verified_pairs": 0}
    if d.near:
        threshold = d.threshold if d.threshold is not None else minhash.threshold(d.bands, d.rows)
        near, pair_counts = engine.near_duplicates(parts, d.partitions, exact, threshold,
                                                   partial(stages.signature_rows, work))
    removed = np.union1d(exact, near).astype(np.uint64)
    overrides = _split_overrides(cfg, work, tasks, scans, removed)
    np.save(work / "removed.npy", removed)
    write_json_atomic(work / "dedup.json", {"exact_dedup": int(len(exact)), "near_dedup": int(len(near)),
                                            **pair_counts, "overrides": overrides})


def _split_overrides(cfg: PrepareConfig, work: Path, tasks: list[sources.Task], scans: list[dict],
                     removed: np.ndarray) -> dict[str, str]:
    """A tiny corpus can hash entirely to one split; neither split may then be empty."""
    if cfg.val_fraction == 0:
        return {}
    if (sum(s["val_documents"] for s in scans) > len(removed)
            and sum(s["train_documents"] for s in scans) > len(removed)):
        return {}  # both splits keep documents whatever dedup removed: no need to read them all
    best_val = best_train = None  # (split_u, id)
    n_val = n_train = 0
    for t in tasks:
        with np.load(stages.scan_paths(work, t.index)["meta.npz"]) as z:
            u = z["split_u"]
        ids = dedup.doc_ids(t.index, len(u))
        keep = ~np.isin(ids, removed)
        ids, u = ids[keep], u[keep]
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


def tokenizer_sample(cfg: PrepareConfig, work: Path, tasks: list[sources.Task]) -> list[str]:
    """The tokenizer's training text: the training documents left after cleaning and dedup with the
    lowest sample hash (a hash of the id: a uniform, deterministic draw over the whole corpus),
    up to tokenizer_sample_size(cfg) bytes (at least one document), in document order.

    The scan noted the candidates (about twice the bound, from the planned input bytes), so only
    they are read; if cleaning or dedup removed more than half, the sample is all of them."""
    removed = np.load(work / "removed.npy")
    overrides = json.loads((work / "dedup.json").read_text())["overrides"]
    to_val = np.array([int(k) for k, v in overrides.items() if v == "val"], np.uint64)
    keys, ids, starts, sizes = [], [], [], []
    for t in tasks:
        with np.load(stages.scan_paths(work, t.index)["meta.npz"]) as z:
            index, key, offsets = z["sample_index"], z["sample_key"], z["offsets"]
        doc = (np.uint64(t.index) << np.uint64(32)) | index.astype(np.uint64)
        keep = ~np.isin(doc, removed) & ~np.isin(doc, to_val)
        keys.append(key[keep])
        ids.append(doc[keep])
        starts.append(offsets[index[keep]])
        sizes.append(offsets[index[keep] + 1] - offsets[index[keep]])
    keys, ids, starts, sizes = (np.concatenate(x) for x in (keys, ids, starts, sizes))
    order = np.lexsort((ids, keys))
    within = np.cumsum(sizes[order]) <= tokenizer_sample_size(cfg)
    within[:1] = True
    chosen = np.sort(order[within])  # ids are sorted within each task and tasks come in order
    texts = []
    by_task = ids[chosen] >> np.uint64(32)
    for t in np.unique(by_task):
        with open(stages.scan_paths(work, int(t))["txt"], "rb") as f:
            for i in chosen[by_task == t]:
                f.seek(int(starts[i]))
                texts.append(f.read(int(sizes[i])).decode("utf-8"))
    return texts


def _tokenizer(cfg: PrepareConfig, out: Path, work: Path, tasks: list[sources.Task]) -> None:
    if cfg.tokenizer is not None:
        tok = tkz.load_tokenizer(cfg.tokenizer)
        tkz.save_tokenizer(tok, out / shards.TOKENIZER)
        return
    tok = tkz.train_tokenizer(tokenizer_sample(cfg, work, tasks), cfg.vocab_size)
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
    rows = Counter()
    for s in scans:
        rows.update(s.get("dedup_rows", {}))
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
        "dedup_rows": {"exact": rows["exact"], "band": rows["band"]},
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
        "eot_id": tkz.eot_id(tok, cfg.eot),
        "tokenizer_fingerprint": tkz.tokenizer_fingerprint(tok),
        "tokenizer_xxh3_128": shards.file_xxh3(out / shards.TOKENIZER),
        "inputs_fingerprint": plan["fingerprint"],
        "sources": source_fps,
        "shard": plan["shard"],
        "prepare": cfg.model_dump(mode="json"),
        "splits": splits,
    }
