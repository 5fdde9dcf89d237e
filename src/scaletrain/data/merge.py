"""Merge finished `prepare --shard i/n` directories into one (`scaletrain prepare --merge`)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from scaletrain.atomic import make_temp_dir, write_json_atomic
from scaletrain.data import shards
from scaletrain.data.pipeline import STATS
from scaletrain.errors import UserError

_SAME = ("dtype", "vocab_size", "eot_id", "tokenizer_fingerprint")


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same filesystem: no copy of the token data
    except OSError:
        shutil.copy2(src, dst)


def merge(dirs: list[Path], out: Path) -> dict[str, Any]:
    """Shards of `dirs`, in the given order, under one manifest; stats summed. Files are checked
    for size (TokenShards) and the tokenizer must be identical; built in a temp dir, renamed."""
    if out.exists():
        raise UserError(f"--out: {out} already exists; choose a new directory")
    manifests = [shards.read_manifest(d) for d in dirs]
    for d, m in zip(dirs[1:], manifests[1:]):
        for key in _SAME:
            if m.get(key) != manifests[0].get(key):
                raise UserError(f"--merge: {d / shards.MANIFEST} has another {key} than "
                                f"{dirs[0] / shards.MANIFEST}; prepare every share with the same --tokenizer")
    for d, m in zip(dirs, manifests):
        for split in m["splits"]:
            shards.TokenShards(d, split)  # missing or truncated files fail here, naming the file
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, prefix=f".{out.name}.tmp-")
    try:
        splits: dict[str, dict[str, Any]] = {}
        for k, (d, m) in enumerate(zip(dirs, manifests)):
            for split, entry in m["splits"].items():
                acc = splits.setdefault(split, {"files": [], "tokens": 0, "documents": 0, "bytes": 0})
                for f in entry["files"]:
                    f = dict(f)
                    for kind in ("bin", "idx"):
                        name = f"part{k:03d}-{f[kind]}"
                        _link(d / f[kind], tmp / name)
                        f[kind] = name
                    acc["files"].append(f)
                for key in ("tokens", "documents", "bytes"):
                    acc[key] += entry[key]
        shutil.copy2(dirs[0] / shards.TOKENIZER, tmp / shards.TOKENIZER)
        stats = _merged_stats(dirs)
        write_json_atomic(tmp / STATS, stats)
        merged = {key: manifests[0][key] for key in ("schema_version", *_SAME)}
        merged.update(splits=splits, merged_from=[str(d) for d in dirs],
                      sources=[s for m in manifests for s in m.get("sources", [])],
                      shards=[m.get("shard") for m in manifests],
                      tokenizer_xxh3_128=shards.file_xxh3(tmp / shards.TOKENIZER),
                      inputs_fingerprint="+".join(m.get("inputs_fingerprint", "") for m in manifests))
        shards.write_manifest(tmp, merged)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


def _merged_stats(dirs: list[Path]) -> dict[str, Any]:
    from scaletrain.untrusted.files import read_json

    total: dict[str, Any] = {}
    for d in dirs:
        s = read_json(d / STATS, what="--merge: a prepared share's statistics")
        for key, value in s.items():
            if isinstance(value, bool) or key in ("shard", "created", "workers", "resumed"):
                continue
            if isinstance(value, (int, float)):
                total[key] = total.get(key, 0) + value
            elif isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
                acc = total.setdefault(key, {})
                for k2, v2 in value.items():
                    acc[k2] = acc.get(k2, 0) + v2
    total["merged_from"] = [str(d) for d in dirs]
    return total
