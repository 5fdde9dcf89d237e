"""Preparing and caching token shards from a small directory of text files."""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from scaletrain.data import corpus, prepare, shards
from scaletrain.data.tokenizer import load_tokenizer
from scaletrain.errors import UserError


def _corpus(root: Path) -> Path:
    words = "alpha beta gamma delta epsilon zeta eta theta def return import".split()
    rng = np.random.default_rng(0)
    for i in range(12):
        body = " ".join(rng.choice(words, size=60 + 10 * i)) + f"\nfile {i} ünï ✓\n"
        p = root / "src" / f"sub{i % 2}" / f"doc{i:02d}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(body, encoding="utf-8")
    return root / "src"


def _spec(src: Path, **kw: object) -> prepare.TextSpec:
    fields = dict(source="dir", path=str(src), pattern="**/*.txt", vocab_size=300,
                  val_fraction=0.25, max_bytes=None)
    fields.update(kw)
    return prepare.TextSpec(**fields)  # type: ignore[arg-type]


def test_prepare_round_trip(tmp_path: Path) -> None:
    src = _corpus(tmp_path)
    spec = _spec(src)
    out = prepare.prepare_text(spec, tmp_path / "out", progress=False)
    assert shards.verify(out) == []
    assert not list(tmp_path.glob(".out.tmp-*"))  # temp build dir renamed away
    manifest = shards.read_manifest(out)
    files = corpus.text_files(src, "**/*.txt")
    assert manifest["inputs_fingerprint"] == prepare.inputs_fingerprint(spec, files)
    train_files, val_files = corpus.split_by_file(files, src, 0.25)
    tok = load_tokenizer(out / "tokenizer.json")
    ts = shards.TokenShards(out, "train")
    assert ts.num_documents == len(train_files)
    assert ts.source_bytes == sum(len(corpus.read_text(p).encode()) for p in train_files)
    bounds = list(ts.doc_starts) + [ts.num_tokens]
    for k, p in enumerate(train_files):
        ids = ts.get(int(bounds[k]), int(bounds[k + 1] - bounds[k]))
        assert ids[-1] == manifest["eot_id"]
        assert tok.decode(ids[:-1].tolist()) == corpus.read_text(p)
    assert shards.TokenShards(out, "val").num_documents == len(val_files)
    stats = prepare.corpus_stats(out)
    assert stats["train"]["tokens"] == ts.num_tokens and stats["train"]["bytes_per_token"] > 1


def test_ensure_prepared_reuses_and_invalidates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _corpus(tmp_path)
    calls = []
    real = prepare.prepare_text
    monkeypatch.setattr(prepare, "prepare_text", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = tmp_path / "cache"
    first = prepare.ensure_prepared(_spec(src), cache, progress=False)
    mtime = (first / "manifest.json").stat().st_mtime_ns
    assert prepare.ensure_prepared(_spec(src), cache, progress=False) == first
    assert len(calls) == 1 and (first / "manifest.json").stat().st_mtime_ns == mtime
    # A deleted shard is noticed cheaply and rebuilt.
    (first / "val_00000.bin").unlink()
    assert prepare.ensure_prepared(_spec(src), cache, progress=False) == first
    assert len(calls) == 2 and shards.verify(first) == []
    # Any input change gives a new fingerprint, hence a new directory.
    files = corpus.text_files(src, "**/*.txt")
    base = prepare.inputs_fingerprint(_spec(src), files)
    assert prepare.inputs_fingerprint(_spec(src, vocab_size=301), files) != base
    assert prepare.inputs_fingerprint(_spec(src, val_fraction=0.3), files) != base
    assert prepare.inputs_fingerprint(_spec(src, max_bytes=10**9), files) != base
    with open(files[3], "a", encoding="utf-8") as f:
        f.write("x")
    assert prepare.inputs_fingerprint(_spec(src), files) != base
    second = prepare.ensure_prepared(_spec(src), cache, progress=False)
    assert second != first and len(calls) == 3


def _worker(args: tuple[str, str]) -> str:
    src, cache = args
    return str(prepare.ensure_prepared(_spec(Path(src)), cache, progress=False))


def test_concurrent_callers_share_one_build(tmp_path: Path) -> None:
    src = _corpus(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        outs = pool.map(_worker, [(str(src), str(tmp_path / "cache"))] * 2)
    assert outs[0] == outs[1] and shards.verify(outs[0]) == []
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == [Path(outs[0]).name]


def test_bad_specs(tmp_path: Path) -> None:
    src = _corpus(tmp_path)
    with pytest.raises(UserError, match="source"):
        prepare.ensure_prepared(_spec(src, source="web"), tmp_path / "c")
    with pytest.raises(UserError, match="val_fraction"):
        prepare.ensure_prepared(_spec(src, val_fraction=0.0), tmp_path / "c")
    with pytest.raises(UserError, match="at least 2 files"):
        prepare.ensure_prepared(_spec(src, max_bytes=1), tmp_path / "c")
    with pytest.raises(UserError, match="missing_dir"):
        prepare.ensure_prepared(_spec(tmp_path / "missing_dir"), tmp_path / "c")
