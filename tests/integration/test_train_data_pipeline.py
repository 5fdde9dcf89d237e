"""One pipeline: `train data.path=DIR` prepares JSONL and Parquet directories through the same stages
as `scaletrain prepare` (cleaning and dedup from `data.clean` / `data.dedup`), into a cache keyed by
the pipeline's fingerprint: the cached folder holds `prepare`'s very bytes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from scaletrain.config.load import load_config
from scaletrain.data import cache, corpus, pipeline, shards
from scaletrain.data.prepare_config import validate
from scaletrain.data.tokenizer import load_tokenizer

from test_prepare_pipeline import _edit, _files

# Distinct stdlib modules, each one document; then an exact copy, a near copy and a too-short one.
MODULES = ["abc", "bisect", "colorsys", "copy", "fnmatch", "getopt", "glob", "heapq", "keyword", "linecache",
           "queue", "sched", "shlex", "string", "textwrap", "token", "netrc", "numbers"]


def _documents() -> list[str]:
    docs = [corpus.read_text(corpus.stdlib_root() / f"{m}.py") for m in MODULES]
    return docs + [docs[2], _edit(docs[7]), "too short"]


def _write(folder: Path, kind: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir()
    docs = _documents()
    half = len(docs) // 2
    for k, part in enumerate((docs[:half], docs[half:])):
        if kind == "jsonl":
            (folder / f"part{k}.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in part))
        else:
            pq.write_table(pa.table({"body": part}), folder / f"part{k}.parquet", row_group_size=5)


def _texts(out: Path) -> list[str]:
    tok = load_tokenizer(out / shards.TOKENIZER)
    found = []
    for split in ("train", "val"):
        ts = shards.TokenShards(out, split)
        bounds = list(ts.doc_starts) + [ts.num_tokens]
        found += [tok.decode(ts.get(int(a), int(b - a) - 1).tolist()) for a, b in zip(bounds[:-1], bounds[1:])]
    return found


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_train_data_path_cleans_and_dedups_like_prepare(kind, tmp_path):
    import torch

    from scaletrain.train.build import build_task

    folder = tmp_path / kind
    _write(folder, kind)
    overrides = [f"data.path={folder}", f"data.pattern=*.{kind}", "data.field=body", "data.vocab_size=300",
                 "data.val_fraction=0.2", "data.max_bytes=null", "data.clean.min_chars=50", f"data.cache_dir={tmp_path / 'cache'}"]
    cfg = load_config("gpt-tiny", overrides)
    _, _, extra, _ = build_task(cfg, torch.device("cpu"), progress=False)
    data_dir = Path(extra["data_dir"])
    stats = json.loads((data_dir / pipeline.STATS).read_text())
    # The copy, the near copy and the short document are gone; every original is kept, once.
    assert stats["removed"] == {"min_chars": 1, "exact_dedup": 1, "near_dedup": 1}
    assert sorted(_texts(data_dir)) == sorted(_documents()[: len(MODULES)])
    # The very bytes `scaletrain prepare` writes for the same inputs and settings.
    ref = validate({"sources": [{"path": str(folder), "pattern": f"*.{kind}", "field": "body"}],
                    "vocab_size": 300, "val_fraction": 0.2, "clean": {"min_chars": 50}})
    pipeline.run_prepare(ref, tmp_path / "prepared", workers=1, progress=False)
    assert _files(data_dir) == _files(tmp_path / "prepared")
    # Cached: the same settings find the folder; other cleaning settings are another build.
    assert cache.prepared(cache.settings(cfg.data), tmp_path / "cache", progress=False) == data_dir
    other = load_config("gpt-tiny", [*overrides, "data.dedup.near=false"])
    assert cache.prepared(cache.settings(other.data), tmp_path / "cache", progress=False) != data_dir
