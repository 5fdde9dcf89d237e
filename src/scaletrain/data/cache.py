"""The trainer's data: `train data.path=...` (or the embedded corpus) goes through the same pipeline as
`scaletrain prepare` (`pipeline.run_prepare`: the same sources, cleaning, dedup, tokenizer and shard
format), into a cache keyed by the pipeline's own fingerprint of the inputs and settings.

`cache_dir/prep-<fingerprint>` is built once; later runs with the same inputs and settings find it
(a cheap check: manifest, fingerprint and every shard's size); an interrupted build is resumed
where it stopped; one lock per build makes a second process wait for the first one's result.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from scaletrain.config.schema import DataConfig
from scaletrain.data import pipeline, shards
from scaletrain.data.prepare_config import PrepareConfig
from scaletrain.errors import UserError

log = logging.getLogger(__name__)


def settings(d: DataConfig) -> PrepareConfig:
    """The `prepare` settings of a `data` section: one source, its cleaning and dedup options."""
    if d.path is None:
        source: dict = {"kind": "stdlib"}
    else:
        source = {"path": str(Path(d.path).expanduser()), "kind": d.format, "pattern": d.pattern, "field": d.field}
    if d.max_bytes is not None:
        source["max_bytes"] = d.max_bytes
    return PrepareConfig(sources=[source], clean=d.clean, dedup=d.dedup, vocab_size=d.vocab_size,
                         val_fraction=d.val_fraction)


def _complete(d: Path, fingerprint: str) -> bool:
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
def locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _check_splittable(cfg: PrepareConfig, plan: dict) -> None:
    """Text is one document per file: fewer than 2 files cannot give a train and a val split."""
    if pipeline.source_kinds(cfg)[0] in ("stdlib", "text"):
        files = {f for t in plan["tasks"] for f in t["files"]}
        where = cfg.sources[0].path or "the embedded corpus"
        if len(files) < 2:
            extra = f" with max_bytes={cfg.sources[0].max_bytes}" if cfg.sources[0].max_bytes else ""
            raise UserError(f"need at least 2 files to split train/val, got {len(files)} from {where}{extra}")
        if not any(t["nbytes"] for t in plan["tasks"]):
            # Every document would be only its end-of-text token: a run would "train" on nothing.
            raise UserError(f"{where}: the {len(files)} file(s) matching {cfg.sources[0].pattern!r} are empty "
                            "(0 bytes): there is no text to train on")


def _check_split_documents(d: Path) -> None:
    splits = shards.read_manifest(d)["splits"]
    for name in ("train", "val"):
        if splits[name]["documents"] == 0:
            total = sum(s["documents"] for s in splits.values())
            raise UserError(f"{total} document(s) left after cleaning and dedup; need at least 2 to split "
                            f"train/val ({name} is empty)")


@contextlib.contextmanager
def _named(what: str) -> Iterator[None]:
    """Bad input found while preparing names the setting it came from (data.path, or data)."""
    try:
        yield
    except UserError as exc:
        raise UserError(f"{what}: {exc}") from None


def folder(cache_dir: str | Path, fingerprint: str) -> Path:
    """Where the build of the inputs and settings with this pipeline fingerprint lies."""
    return Path(cache_dir) / f"prep-{fingerprint[:16]}"


def prepared(cfg: PrepareConfig, cache_dir: str | Path, progress: bool = True, workers: int | None = None,
             what: str = "data.path") -> Path:
    """The prepared directory of `cfg` under `cache_dir`, built (or resumed) only if no finished,
    intact build of the same inputs and settings exists. Errors about the inputs start with `what`."""
    cache_dir = Path(cache_dir)
    with _named(what):
        plan = pipeline.plan(cfg)
    fingerprint = plan["fingerprint"]
    d = folder(cache_dir, fingerprint)
    if _complete(d, fingerprint):
        return d
    with _named(what):
        _check_splittable(cfg, plan)
    created = not cache_dir.exists()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"data.cache_dir: cannot create {cache_dir}: {e.strerror or e}") from None
    try:
        with locked(cache_dir / f".{d.name}.lock"):
            if _complete(d, fingerprint):
                return d
            if (d / shards.MANIFEST).exists():  # finished once, damaged since: built again
                shutil.rmtree(d)
            if progress:  # (a quiet run says nothing before its result, or its one error line)
                log.info("preparing %s (%d tasks)", d, len(plan["tasks"]))
            with _named(what):
                pipeline.run_prepare(cfg, d, workers=workers, progress=progress)
        with _named(what):
            _check_split_documents(d)
    except UserError:
        # Inputs that only reading shows to be unusable (every file empty, nothing left after
        # cleaning): a refused start leaves no cache folder it made behind.
        if created:
            shutil.rmtree(cache_dir, ignore_errors=True)
        raise
    return d
