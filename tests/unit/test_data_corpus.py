"""Corpus listing and the byte-level BPE tokenizer (the train/val split is by document id: test_prepare_pipeline)."""
from __future__ import annotations

from pathlib import Path

import pytest

from scaletrain.data import corpus, tokenizer as tkz
from scaletrain.errors import UserError


def _make_tree(root: Path, n: int = 40) -> list[Path]:
    files = []
    for i in range(n):
        p = root / f"d{i % 3}" / f"f{i:03d}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"file {i}\n" * (i + 1), encoding="utf-8")
        files.append(p)
    return files


def test_stdlib_files() -> None:
    files = corpus.stdlib_files()
    root = corpus.stdlib_root()
    assert len(files) > 500
    assert all(p.suffix == ".py" and p.is_file() for p in files)
    rels = [p.relative_to(root).as_posix() for p in files]
    assert not any("site-packages" in r or "dist-packages" in r for r in rels)
    assert rels == sorted(rels)
    assert "os.py" in rels


def test_text_files_and_errors(tmp_path: Path) -> None:
    _make_tree(tmp_path, 6)
    (tmp_path / "skip.md").write_text("x")
    found = corpus.text_files(tmp_path, "**/*.txt")
    assert len(found) == 6 and all(p.suffix == ".txt" for p in found)
    with pytest.raises(UserError, match="nope"):
        corpus.text_files(tmp_path / "nope", "**/*.txt")
    with pytest.raises(UserError, match=r"\*\*/\*\.csv"):
        corpus.text_files(tmp_path, "**/*.csv")


def test_read_text_replaces_bad_utf8(tmp_path: Path) -> None:
    p = tmp_path / "bad.txt"
    p.write_bytes(b"ok \xff end")
    assert corpus.read_text(p) == "ok \ufffd end"


def test_select_max_bytes(tmp_path: Path) -> None:
    files = _make_tree(tmp_path)
    assert corpus.select_max_bytes(files, None) == sorted(files)
    chosen = corpus.select_max_bytes(files, 1000)
    assert chosen == corpus.select_max_bytes(list(reversed(files)), 1000)
    assert 0 < sum(p.stat().st_size for p in chosen) <= 1000
    assert chosen == sorted(chosen)
    assert len(corpus.select_max_bytes(files, 1)) == 1  # at least one file


# --- tokenizer ---------------------------------------------------------------

def _stdlib_sample(n: int) -> list[str]:
    files = corpus.stdlib_files()
    return [corpus.read_text(p) for p in files[:: len(files) // n][:n]]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [t[:20_000] for t in _stdlib_sample(12)]


def test_tokenizer_round_trip_and_eot(texts: list[str]) -> None:
    tok = tkz.train_tokenizer(texts, 400)
    assert tok.get_vocab_size() <= 400
    held_out = corpus.read_text(corpus.stdlib_root() / "textwrap.py")
    for text in [held_out, "  tabs\tand\r\nCRLF, ünïcödé → 漢字 🐍\n"] + texts[:3]:
        assert tok.decode(tok.encode(text).ids) == text
    assert tok.id_to_token(tkz.eot_id(tok)) == tkz.EOT


def test_tokenizer_deterministic_and_fingerprint(texts: list[str], tmp_path: Path) -> None:
    a = tkz.train_tokenizer(texts, 400)
    b = tkz.train_tokenizer(texts, 400)
    assert a.to_str() == b.to_str()
    assert tkz.tokenizer_fingerprint(a) == tkz.tokenizer_fingerprint(b)
    path = tmp_path / "tok.json"
    tkz.save_tokenizer(a, path)
    assert tkz.tokenizer_fingerprint(tkz.load_tokenizer(path)) == tkz.tokenizer_fingerprint(a)
    assert tkz.tokenizer_fingerprint(tkz.train_tokenizer(texts, 300)) != tkz.tokenizer_fingerprint(a)


def test_tokenizer_load_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing.json"):
        tkz.load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad.json"):
        tkz.load_tokenizer(bad)
    with pytest.raises(UserError, match="vocab_size"):
        tkz.train_tokenizer(["x"], 100)
