"""`scaletrain prepare` end to end on real text (stdlib modules) with planted duplicates;
identical output for 1 and 2 workers; resume after a crash; --shard and --merge."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path

import pytest

from scaletrain.data import corpus, pipeline, shards, stages
from scaletrain.data.prepare_config import task_size, validate
from scaletrain.data.tokenizer import load_tokenizer
from scaletrain.errors import UserError

# Distinct modules of 3-40 KB: no two of them are near duplicates of each other.
MODULES = ["abc", "bisect", "colorsys", "copy", "fnmatch", "getopt", "glob", "heapq", "keyword",
           "linecache", "queue", "sched", "shlex", "string", "textwrap", "this", "token", "tabnanny",
           "netrc", "numbers", "pprint", "reprlib", "stringprep", "weakref"]


def _edit(text: str) -> str:
    """A near duplicate: one line in 40 gets two extra words (Jaccard of 5-gram shingles ~0.9)."""
    lines = text.splitlines()
    for i in range(0, len(lines), 40):
        lines[i] += " # edited here"
    return "\n".join(lines) + "\n"


def make_corpus(root: Path) -> tuple[Path, dict[str, str]]:
    """Real text plus 3 exact and 3 near duplicates named to sort after their originals."""
    src = root / "corpus"
    src.mkdir(parents=True)
    texts = {}
    for m in MODULES:
        text = corpus.read_text(corpus.stdlib_root() / f"{m}.py")
        (src / f"{m}.txt").write_text(text, encoding="utf-8")
        texts[f"{m}.txt"] = text
    for m in MODULES[:3]:
        (src / f"zz_exact_{m}.txt").write_text(texts[f"{m}.txt"], encoding="utf-8")
    for m in ("heapq", "pprint", "weakref"):
        (src / f"zz_near_{m}.txt").write_text(_edit(texts[f"{m}.txt"]), encoding="utf-8")
    return src, texts


def _cfg(src: Path, **kw) -> object:
    raw = {"sources": [{"path": str(src)}], "vocab_size": 300, "task_bytes": 60_000,
           "val_fraction": 0.2}
    raw.update(kw)
    return validate(raw)


def _documents(out: Path) -> list[str]:
    tok = load_tokenizer(out / shards.TOKENIZER)
    docs = []
    for split in ("train", "val"):
        ts = shards.TokenShards(out, split)
        bounds = list(ts.doc_starts) + [ts.num_tokens]
        for a, b in zip(bounds[:-1], bounds[1:]):
            docs.append(tok.decode(ts.get(int(a), int(b - a) - 1).tolist()))  # minus EOT
    return docs


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != pipeline.STATS}


def test_cli_removes_planted_duplicates(tmp_path: Path, run_main) -> None:
    src, texts = make_corpus(tmp_path)
    out = tmp_path / "out"
    rc, stdout, stderr = run_main("prepare", src, "--out", out, "--vocab-size", "300",
                                  "--workers", "1", "--no-progress", "--task-bytes", "60000")
    assert rc == 0, stderr
    stats = json.loads((out / "stats.json").read_text())
    assert stats["documents_in"] == len(MODULES) + 6
    assert stats["removed"] == {"exact_dedup": 3, "near_dedup": 3}
    assert stats["documents_out"] == len(MODULES)
    assert json.loads(stdout.splitlines()[0])["removed"] == stats["removed"]
    # Exactly the originals are kept (the lowest id of each cluster), the copies are gone.
    assert sorted(_documents(out)) == sorted(texts.values())
    assert shards.verify(out) == []
    assert not (out / pipeline.WORK).exists()
    rc, _, stderr = run_main("prepare", src, "--out", out, "--vocab-size", "300")
    assert rc == 2 and "finished" in stderr
    rc, stdout, _ = run_main("data", "inspect", out, "--samples", "2")
    assert rc == 0 and '"exact_dedup": 3' in stdout and "first tokens" in stdout and "sample 1 (" in stdout
    victim = sorted(out.glob("val-*.bin"))[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    rc, stdout, stderr = run_main("data", "verify", out)
    assert rc == 2 and f"{victim.name}: checksum mismatch" in stdout and "1 problem" in stderr


def test_identical_output_for_1_and_2_workers(tmp_path: Path) -> None:
    src, _ = make_corpus(tmp_path)
    one = tmp_path / "one"
    two = tmp_path / "two"
    s1 = pipeline.run_prepare(_cfg(src), one, workers=1, progress=False)
    s2 = pipeline.run_prepare(_cfg(src), two, workers=2, progress=False)
    assert s1["tasks"] > 3
    assert _files(one) == _files(two)
    timing = ("seconds", "phase_seconds", "workers", "created", "worker_peak_rss_bytes")
    assert {k: v for k, v in s1.items() if k not in timing} == {k: v for k, v in s2.items() if k not in timing}


def test_resume_after_crash_redoes_only_unfinished_tasks(tmp_path: Path, monkeypatch) -> None:
    src, _ = make_corpus(tmp_path)
    ref = tmp_path / "ref"
    pipeline.run_prepare(_cfg(src), ref, workers=1, progress=False)
    out = tmp_path / "out"
    real_tokenize, real_scan = stages.tokenize, stages.scan
    calls = {"scan": 0, "tokenize": 0}

    def crashing(cfg, out_, work, task):
        if task.index == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the tokenize phase
        return real_tokenize(cfg, out_, work, task)

    monkeypatch.setattr(stages, "tokenize", crashing)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_prepare(_cfg(src), out, workers=1, progress=False)
    assert not (out / shards.MANIFEST).exists()
    assert len(list((out / "work" / "tokenize").glob("*.json"))) == 2  # tasks 0 and 1
    # A half-written shard of the crashed task (lost marker) must not survive into the result.
    (out / "train-00002_00000.bin").write_bytes(b"garbage")

    def count(name, real):
        def wrapped(*a):
            calls[name] += 1
            return real(*a)
        return wrapped

    monkeypatch.setattr(stages, "tokenize", count("tokenize", real_tokenize))
    monkeypatch.setattr(stages, "scan", count("scan", real_scan))
    stats = pipeline.run_prepare(_cfg(src), out, workers=1, progress=False)
    assert stats["resumed"] is True
    assert calls == {"scan": 0, "tokenize": stats["tasks"] - 2}
    assert _files(out) == _files(ref)
    # Other settings on an unfinished directory are refused, naming it.
    (out / shards.MANIFEST).unlink()
    (out / "work").mkdir()
    (out / "work" / "plan.json").write_text('{"fingerprint": "other"}')
    with pytest.raises(UserError, match="unfinished run"):
        pipeline.run_prepare(_cfg(src), out, workers=1, progress=False)


@pytest.mark.slow
def test_resume_after_killed_workers(tmp_path: Path) -> None:
    """SIGKILL the whole process group (main process and its 2 workers) mid-run, then resume."""
    src, _ = make_corpus(tmp_path)
    ref = tmp_path / "ref"
    pipeline.run_prepare(_cfg(src), ref, workers=1, progress=False)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "scaletrain", "prepare", str(src), "--out", str(out), "--vocab-size",
            "300", "--task-bytes", "60000", "--val-fraction", "0.2", "--workers", "2", "--no-progress"]
    env = {**os.environ, "RAYON_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, start_new_session=True, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list((out / "work" / "scan").glob("*.json")):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / shards.MANIFEST).exists()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _files(out) == _files(ref)


def test_shards_and_merge(tmp_path: Path, run_main) -> None:
    src, texts = make_corpus(tmp_path)
    whole = tmp_path / "whole"
    pipeline.run_prepare(_cfg(src), whole, workers=1, progress=False)
    tok = whole / shards.TOKENIZER
    parts = []
    for i in range(2):
        d = tmp_path / f"part{i}"
        rc, _, err = run_main("prepare", src, "--out", d, "--shard", f"{i}/2", "--tokenizer", tok,
                              "--workers", "1", "--no-progress", "--task-bytes", "60000",
                              "--val-fraction", "0.2")
        assert rc == 0, err
        parts.append(d)
    rc, _, err = run_main("prepare", src, "--out", tmp_path / "x", "--shard", "0/2")
    assert rc == 2 and "--tokenizer" in err
    merged = tmp_path / "merged"
    rc, _, err = run_main("prepare", "--merge", *parts, "--out", merged)
    assert rc == 0, err
    assert shards.verify(merged) == []
    p0, p1 = (json.loads((d / "stats.json").read_text()) for d in parts)
    m = json.loads((merged / "stats.json").read_text())
    assert m["documents_in"] == p0["documents_in"] + p1["documents_in"] == len(MODULES) + 6
    # Each share saw every task once; duplicates across shares are out of each machine's reach.
    assert m["tokens"] == sum(shards.TokenShards(merged, s).num_tokens for s in ("train", "val"))
    assert set(texts.values()) <= set(_documents(merged))
    other = tmp_path / "other"
    pipeline.run_prepare(_cfg(src, vocab_size=270), other, workers=1, progress=False)
    rc, _, err = run_main("prepare", "--merge", parts[0], other, "--out", tmp_path / "bad")
    assert rc == 2 and "tokenizer" in err and "other" in err


def test_jsonl_and_parquet_mixture_with_bad_input(tmp_path: Path) -> None:
    """Bad lines are counted in stats.json; weights write floor(w) copies plus one with
    probability frac(w), drawn per document id; validation documents are written once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scaletrain.data import sources

    words = corpus.read_text(corpus.stdlib_root() / "argparse.py").split()
    assert len(words) > 60 * 40
    docs = [" ".join(words[i * 40 : i * 40 + 40]) for i in range(60)]
    jl = tmp_path / "a.jsonl"
    lines = [json.dumps({"text": d}) for d in docs[:20]] + ["{oops", json.dumps({"title": "x"}), ""]
    jl.write_text("\n".join(lines) + "\n")
    pqf = tmp_path / "b.parquet"
    pq.write_table(pa.table({"body": docs[20:] + [None]}), pqf, row_group_size=16)
    cfg = validate({"sources": [{"path": str(jl), "weight": 2.0},
                                {"path": str(pqf), "field": "body", "weight": 0.5}],
                    "vocab_size": 300, "val_fraction": 0.2, "dedup": {"near": False}})
    stats = pipeline.run_prepare(cfg, tmp_path / "out", workers=1, progress=False)
    assert stats["skipped"] == {"bad_json": 1, "missing_field": 2, "empty": 1}
    assert stats["documents_in"] == stats["documents_out"] == 60
    expected = {"train": 0, "val": 0}
    for spec in pipeline._source_specs(cfg):
        for task in sources.plan_tasks([spec], partial(task_size, cfg)):
            for doc in sources.read_task(task, spec.field, 10**6, "replace", Counter(), Counter()):
                doc_id = doc.id.replace("0:", f"{0 if spec.kind == 'jsonl' else 1}:", 1)
                if stages.unit_hash(doc_id, 0, stages._SEED_SPLIT) < 0.2:
                    expected["val"] += 1
                else:
                    w = spec.weight
                    expected["train"] += int(w) + (stages.unit_hash(doc_id, 0, stages._SEED_MIX) < w - int(w))
    assert stats["splits"]["train"]["documents"] == expected["train"]
    assert stats["splits"]["val"]["documents"] == expected["val"]
    assert expected["val"] > 0 and stats["documents_written"] == expected["train"] + expected["val"]


def test_bad_settings_name_the_key(tmp_path: Path, run_main) -> None:
    cfg = tmp_path / "prep.yaml"
    cfg.write_text("dedup: {bnds: 3}\n")
    rc, _, err = run_main("prepare", "--config", cfg, "--out", tmp_path / "o")
    assert rc == 2 and "dedup.bnds: unknown key" in err
    cfg.write_text("sources: [{path: x, kind: csv}]\n")
    rc, _, err = run_main("prepare", "--config", cfg, "--out", tmp_path / "o")
    assert rc == 2 and "sources.0.kind" in err
    rc, _, err = run_main("prepare", "--shard", "2/2", "--out", tmp_path / "o")
    assert rc == 2 and "--shard" in err
    rc, _, err = run_main("prepare", tmp_path / "missing", "--out", tmp_path / "o")
    assert rc == 2 and "missing" in err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    src, _ = make_corpus(tmp_path)
    rc, _, err = run_main("prepare", src, "--out", busy, "--vocab-size", "300")
    assert rc == 2 and "not an unfinished preparation" in err


def test_engine_ray_without_ray_names_the_extra(tmp_path: Path, run_main, monkeypatch) -> None:
    src, _ = make_corpus(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    rc, _, err = run_main("prepare", src, "--out", tmp_path / "out", "--engine", "ray", "--no-progress")
    assert rc == 2 and err.count("\n") == 1
    assert "prepare --engine ray needs the package 'ray'" in err and "pip install 'scaletrain[ray]'" in err
    assert not (tmp_path / "out").exists()
