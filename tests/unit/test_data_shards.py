"""Token shards: write/read round trip, dtype choice, integrity checks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scaletrain.data import shards
from scaletrain.data.tokenizer import save_tokenizer, tokenizer_fingerprint, train_tokenizer
from scaletrain.errors import UserError


def _docs(rng: np.random.Generator, n: int, vocab: int) -> list[np.ndarray]:
    return [rng.integers(0, vocab, size=int(rng.integers(1, 40))) for _ in range(n)]


def _build(tmp: Path, vocab: int = 300, shard_tokens: int = 100, n: int = 30) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    docs = {"train": _docs(rng, n, vocab), "val": _docs(rng, 5, vocab)}
    tok = train_tokenizer(["hello world"], 300)
    save_tokenizer(tok, tmp / shards.TOKENIZER)
    dtype = shards.token_dtype(vocab)
    splits = {
        s: shards.write_split(tmp, s, d, dtype, shard_tokens=shard_tokens, source_bytes=123)
        for s, d in docs.items()
    }
    shards.write_manifest(tmp, {
        "schema_version": 1, "dtype": dtype.name, "vocab_size": vocab,
        "tokenizer_fingerprint": tokenizer_fingerprint(tok), "inputs_fingerprint": "x",
        "splits": splits, "created": "now", "eot_id": 0,
    })
    return docs["train"]


def test_token_dtype() -> None:
    assert shards.token_dtype(65535) == np.uint16
    assert shards.token_dtype(65536) == np.uint32


def test_round_trip_across_shards(tmp_path: Path) -> None:
    docs = _build(tmp_path)
    ref = np.concatenate(docs)
    ts = shards.TokenShards(tmp_path, "train")
    manifest = shards.read_manifest(tmp_path)
    files = manifest["splits"]["train"]["files"]
    assert len(files) > 3 and all(f["tokens"] <= 100 for f in files)
    assert (ts.num_tokens, ts.num_documents, ts.source_bytes) == (len(ref), len(docs), 123)
    assert len(ts) == len(ref) and ts.dtype == np.uint16 and ts.vocab_size == 300
    np.testing.assert_array_equal(ts.get(0, len(ref)), ref)
    boundary = files[0]["tokens"]
    got = ts.get(boundary - 5, 150)  # spans at least two boundaries
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ref[boundary - 5 : boundary + 145])
    np.testing.assert_array_equal(ts.tokens[10:20], ref[10:20])
    np.testing.assert_array_equal(ts.doc_starts, np.cumsum([0] + [len(d) for d in docs[:-1]]))
    np.testing.assert_array_equal(ts.bincount(chunk_tokens=7), np.bincount(ref, minlength=300))
    with pytest.raises(IndexError):
        ts.get(len(ref) - 1, 2)
    assert shards.verify(tmp_path) == []


def test_single_shard_is_memmap_and_uint32(tmp_path: Path) -> None:
    docs = _build(tmp_path, vocab=70_000, shard_tokens=2**24)
    ts = shards.TokenShards(tmp_path, "train")
    assert isinstance(ts.tokens, np.memmap) and ts.tokens.dtype == np.uint32
    np.testing.assert_array_equal(ts.tokens, np.concatenate(docs))


def test_oversized_document_gets_own_shard(tmp_path: Path) -> None:
    docs = [np.arange(5), np.arange(50), np.arange(3)]
    entry = shards.write_split(tmp_path, "train", docs, np.uint16, shard_tokens=10)
    assert [f["tokens"] for f in entry["files"]] == [5, 50, 3]
    with pytest.raises(ValueError, match="out of range"):
        shards.write_split(tmp_path, "bad", [np.array([70_000])], np.uint16)


def test_verify_detects_flipped_byte_and_truncation(tmp_path: Path) -> None:
    _build(tmp_path)
    b = tmp_path / "train_00001.bin"
    data = bytearray(b.read_bytes())
    data[3] ^= 0xFF
    b.write_bytes(bytes(data))
    problems = shards.verify(tmp_path)
    assert len(problems) == 1 and "train_00001.bin" in problems[0] and "checksum" in problems[0]
    idx = tmp_path / "val_00000.idx"
    idx.write_bytes(idx.read_bytes()[:-1])
    assert any("val_00000.idx" in p for p in shards.verify(tmp_path))


def test_open_raises_on_missing_or_truncated(tmp_path: Path) -> None:
    _build(tmp_path)
    b = tmp_path / "train_00002.bin"
    b.write_bytes(b.read_bytes()[:-2])
    with pytest.raises(UserError, match="train_00002.bin"):
        shards.TokenShards(tmp_path, "train")
    (tmp_path / "val_00000.bin").unlink()
    with pytest.raises(UserError, match="val_00000.bin"):
        shards.TokenShards(tmp_path, "val")
    with pytest.raises(UserError, match="nosuch"):
        shards.TokenShards(tmp_path, "nosuch")
    with pytest.raises(UserError, match="manifest"):
        shards.TokenShards(tmp_path / "empty", "train")


def _rewrite_manifest(tmp: Path, **changes: object) -> None:
    import json

    m = shards.read_manifest(tmp)
    m.update(changes)
    shards.write_manifest(tmp, m)  # with a matching self-checksum: the field checks behind it are tested


def test_open_checks_checksums_dtype_and_tokenizer(tmp_path: Path) -> None:
    import json

    _build(tmp_path)
    tok_sum = shards.file_xxh3(tmp_path / shards.TOKENIZER)
    _rewrite_manifest(tmp_path, tokenizer_xxh3_128=tok_sum)
    shards.TokenShards(tmp_path, "train", verify=True)
    # Same size, one flipped byte: only the checksum sees it.
    b = tmp_path / "train_00001.bin"
    data = bytearray(b.read_bytes())
    data[0] ^= 1
    b.write_bytes(bytes(data))
    shards.TokenShards(tmp_path, "train")  # the cheap open does not read the data
    with pytest.raises(UserError, match="train_00001.bin.*checksum"):
        shards.TokenShards(tmp_path, "train", verify=True)
    # A manifest that claims a dtype that cannot hold the vocabulary, or no token dtype at all.
    _rewrite_manifest(tmp_path, vocab_size=70_000)
    with pytest.raises(UserError, match="manifest.json.*uint16 cannot hold"):
        shards.TokenShards(tmp_path, "val")
    _rewrite_manifest(tmp_path, vocab_size=300, dtype="float32")
    with pytest.raises(UserError, match="manifest.json.*float32"):
        shards.TokenShards(tmp_path, "val")
    _rewrite_manifest(tmp_path, dtype="uint16")
    # Another tokenizer than the one the shards were made with.
    with pytest.raises(UserError, match="another tokenizer"):
        shards.TokenShards(tmp_path, "val", tokenizer_fingerprint="0" * 32)
    tok = tmp_path / shards.TOKENIZER
    tok.write_text(json.dumps(json.loads(tok.read_text())) + " ")
    with pytest.raises(UserError, match="tokenizer.json"):
        shards.TokenShards(tmp_path, "val")
    assert any("tokenizer.json: checksum" in p for p in shards.verify(tmp_path))
    # A manifest with a file entry missing its keys names the manifest.
    m = shards.read_manifest(tmp_path)
    del m["splits"]["val"]["files"][0]["tokens"]
    shards.write_manifest(tmp_path, m)
    with pytest.raises(UserError, match="manifest.json is malformed"):
        shards.TokenShards(tmp_path, "val")


@pytest.mark.parametrize("change,expected", [
    (lambda m: m["splits"]["train"]["files"][0].update(bin="../outside.bin"), "'../outside.bin', a path outside"),
    (lambda m: m["splits"]["train"]["files"][0].update(idx="/etc/passwd"), "'/etc/passwd', a path outside"),
    (lambda m: m["splits"]["val"]["files"][0].update(tokens="12"), "'tokens' must be int"),
    (lambda m: m["splits"]["val"].update(documents=-1), "'documents' is negative"),
    (lambda m: m.update(splits=[1]), "'splits' must be dict"),
    (lambda m: m.update(vocab_size=True), "'vocab_size' must be int"),
    (lambda m: m.update(eot_id=300), "eot_id 300 is outside the vocabulary"),
    (lambda m: m["splits"]["val"]["files"].append(7), "files[1] is not a mapping"),
    (lambda m: m["splits"]["train"].update(tokens=m["splits"]["train"]["tokens"] + 1), "tokens total"),
])
def test_a_planted_manifest_is_refused_before_any_file_is_opened(tmp_path: Path, change, expected) -> None:
    """The attacker re-signs the manifest (its self-checksum proves consistency, not trust)."""
    _build(tmp_path)
    (tmp_path.parent / "outside.bin").write_bytes(b"\0" * 4096)
    m = shards.read_manifest(tmp_path)
    change(m)
    shards.write_manifest(tmp_path, m)
    with pytest.raises(UserError, match="manifest.json") as info:
        shards.TokenShards(tmp_path, "train")
    assert expected in str(info.value)
    assert len(problems := shards.verify(tmp_path)) == 1 and expected in problems[0]


def test_a_symlinked_shard_leading_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    _build(tmp_path / "d")
    target = tmp_path / "elsewhere.bin"
    (tmp_path / "d" / "val_00000.bin").rename(target)
    (tmp_path / "d" / "val_00000.bin").symlink_to(target)
    with pytest.raises(UserError, match="leads outside its folder"):
        shards.TokenShards(tmp_path / "d", "val")
