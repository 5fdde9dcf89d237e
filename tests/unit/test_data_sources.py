"""Sources and cleaning: every bad input is counted, never raised; JSONL byte-range tasks cover
each line exactly once; Parquet row groups; filters count what they remove."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from scaletrain.data import clean, sources
from scaletrain.errors import UserError


def _read(spec: sources.SourceSpec, task_bytes: int = 1 << 20, max_doc_bytes: int = 1 << 20,
          undecodable: str = "replace") -> tuple[list[sources.Doc], Counter, Counter]:
    skipped, repaired = Counter(), Counter()
    docs = []
    for task in sources.plan_tasks([spec], task_bytes):
        docs += list(sources.read_task(task, spec.field, max_doc_bytes, undecodable, skipped, repaired))
    return docs, skipped, repaired


def test_jsonl_bad_lines_are_counted(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    lines = [json.dumps({"text": "good one"}).encode(), b"{not json", json.dumps({"body": "x"}).encode(),
             json.dumps({"text": 5}).encode(), b"[1, 2]", b"", json.dumps({"text": "x" * 500}).encode(),
             b'{"text": "caf\xe9"}', json.dumps({"text": "good two"}).encode()]
    f.write_bytes(b"\n".join(lines))  # the last line has no newline
    docs, skipped, repaired = _read(sources.SourceSpec("jsonl", str(f)), max_doc_bytes=100)
    assert [d.text for d in docs] == ["good one", "caf\ufffd", "good two"]
    assert skipped == {"bad_json": 1, "missing_field": 3, "empty": 1, "too_long": 1}
    assert repaired == {"undecodable": 1}
    _, skipped, _ = _read(sources.SourceSpec("jsonl", str(f)), max_doc_bytes=100, undecodable="skip")
    assert skipped["undecodable"] == 1
    # Ids are stable: source, file, byte offset of the line.
    assert docs[0].id == "0:a.jsonl:0"


def test_jsonl_byte_range_tasks_cover_each_line_once(tmp_path: Path) -> None:
    f = tmp_path / "b.jsonl"
    texts = [f"doc {i} " + "y" * (i % 17) for i in range(300)]
    f.write_text("".join(json.dumps({"t": t}) + "\n" for t in texts))
    for task_bytes in (7, 64, 1000, 10**6):
        docs, skipped, _ = _read(sources.SourceSpec("jsonl", str(f), field="t"), task_bytes=task_bytes)
        assert [d.text for d in docs] == texts and not skipped
        assert len({d.id for d in docs}) == len(texts)


def test_text_files_empty_undecodable_and_oversized(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello\n")
    (tmp_path / "b.txt").write_bytes(b"")
    (tmp_path / "c.txt").write_bytes(b"latin \xe9t\xe9\n")
    (tmp_path / "d.txt").write_text("z" * 5000)  # one absurdly long line
    docs, skipped, repaired = _read(sources.SourceSpec("text", str(tmp_path), pattern="*.txt"),
                                    max_doc_bytes=1000)
    assert [d.id for d in docs] == ["0:a.txt", "0:c.txt"]
    assert skipped == {"empty": 1, "too_long": 1} and repaired == {"undecodable": 1}
    with pytest.raises(UserError, match="no files match"):
        sources.plan_tasks([sources.SourceSpec("text", str(tmp_path), pattern="*.md")], 100)
    with pytest.raises(UserError, match="missing"):
        sources.plan_tasks([sources.SourceSpec("text", str(tmp_path / "missing"))], 100)


def test_parquet_row_groups(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "c.parquet"
    values = [f"row {i}" for i in range(25)]
    values[3] = None
    values[7] = "   "
    pq.write_table(pa.table({"content": values, "n": list(range(25))}), f, row_group_size=10)
    spec = sources.SourceSpec("parquet", str(f), field="content")
    assert len(sources.plan_tasks([spec], 1)) == 3  # one task per row group
    docs, skipped, _ = _read(spec)
    assert [d.text for d in docs] == [v for v in values if v and v.strip()]
    assert skipped == {"missing_field": 1, "empty": 1}
    assert docs[10].id == "0:c.parquet:1:2"  # row group 1, row 2
    with pytest.raises(UserError, match="no column 'text'"):
        sources.plan_tasks([sources.SourceSpec("parquet", str(f))], 1)
    with pytest.raises(UserError, match="type int64"):
        sources.plan_tasks([sources.SourceSpec("parquet", str(f), field="n")], 1)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(UserError, match="bad.parquet"):
        sources.plan_tasks([sources.SourceSpec("parquet", str(tmp_path / "bad.parquet"))], 1)


def test_glob_and_kind_inference(tmp_path: Path) -> None:
    for name in ("x/1.jsonl", "x/2.jsonl", "y/3.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text('{"text": "a"}\n')
    tasks = sources.plan_tasks([sources.SourceSpec("jsonl", str(tmp_path / "*" / "*.jsonl"))], 100)
    assert [t.rel for t in tasks] == [("x/1.jsonl",), ("x/2.jsonl",)]
    assert sources.infer_kind("a/b.jsonl") == "jsonl" and sources.infer_kind("a.parquet") == "parquet"
    assert sources.infer_kind("dir") == "text"


@pytest.mark.parametrize("suffix", [".gz", ".zst", ".bz2"])
def test_compressed_jsonl_reads_like_plain(tmp_path: Path, suffix: str) -> None:
    import pyarrow as pa

    lines = [json.dumps({"text": f"doc {i} " + "z" * i}).encode() for i in range(50)]
    lines[7] = b"{broken"
    lines[9] = json.dumps({"text": "x" * 300}).encode()  # over max_doc_bytes
    data = b"\n".join(lines) + b"\n"
    (tmp_path / "plain").mkdir()
    (tmp_path / "packed").mkdir()
    (tmp_path / "plain" / "a.jsonl").write_bytes(data)
    with pa.output_stream(tmp_path / "packed" / f"a.jsonl{suffix}", compression="detect") as f:
        f.write(data)
    plain, s1, _ = _read(sources.SourceSpec("jsonl", str(tmp_path / "plain" / "a.jsonl")), task_bytes=64,
                         max_doc_bytes=200)
    spec = sources.SourceSpec("jsonl", str(tmp_path / "packed" / f"a.jsonl{suffix}"))
    packed, s2, _ = _read(spec, task_bytes=64, max_doc_bytes=200)
    assert len(sources.plan_tasks([spec], 64)) == 1  # no byte ranges in a compressed stream
    assert [(d.id.replace(suffix, ""), d.text) for d in packed] == [(d.id, d.text) for d in plain]  # same offsets
    assert s1 == s2 == {"bad_json": 1, "too_long": 1}
    assert sources.infer_kind(f"x/a.jsonl{suffix}") == "jsonl"
    assert sources.infer_kind(str(tmp_path / "packed"), f"**/*.jsonl{suffix}") == "jsonl"
    # A damaged stream is counted, not raised: what was read before the damage is kept.
    (tmp_path / "packed" / f"cut.jsonl{suffix}").write_bytes((tmp_path / "packed" / f"a.jsonl{suffix}").read_bytes()[:-9])
    cut, s3, _ = _read(sources.SourceSpec("jsonl", str(tmp_path / "packed" / f"cut.jsonl{suffix}")), max_doc_bytes=200)
    assert s3["unreadable"] == 1 and len(cut) < len(packed)


def test_filters_and_normalization() -> None:
    c = clean.Cleaner(clean.CleanSpec(normalize="NFKC", min_chars=5, max_chars=100, max_line_chars=40,
                                      max_non_alnum_fraction=0.3, max_repeated_line_fraction=0.5))
    assert c.apply("ﬁne text here") == ("fine text here", None)  # NFKC folds the ligature
    assert c.apply("abc")[1] == "min_chars"
    assert c.apply("a" * 101)[1] == "max_chars"
    assert c.apply("word " * 10 + "\nshort")[1] == "max_line_chars"
    assert c.apply("{}[]();;;; ab")[1] == "max_non_alnum_fraction"
    assert c.apply("same\nsame\nsame\nsame\nother")[1] == "max_repeated_line_fraction"  # 3 of 5
    assert clean.non_alnum_fraction("ab_(\n  )") == pytest.approx(3 / 5)
    assert clean.repeated_line_fraction("a\n\nb\na\na") == pytest.approx(0.5)
    nfc = clean.Cleaner(clean.CleanSpec())
    assert nfc.apply("e\u0301")[0] == "\u00e9" and nfc.enabled_filters() == []
