"""Small prepared shard directories for the loader tests (real shards, manifest and tokenizer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scaletrain.data import shards
from scaletrain.data.tokenizer import save_tokenizer, tokenizer_fingerprint, train_tokenizer

VOCAB = 300


def random_docs(seed: int, n: int, low: int = 5, high: int = 60) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # ids below 256: byte tokens, present in any trained tokenizer
    return [rng.integers(1, 256, size=int(rng.integers(low, high))) for _ in range(n)]


def write_prepared(out: Path, train: list[np.ndarray], val: list[np.ndarray], *,
                   tokenizer_text: str = "hello world", shard_tokens: int = 500) -> Path:
    """A directory laid out as `scaletrain prepare` writes it: shards, tokenizer.json, manifest."""
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer([tokenizer_text], VOCAB)
    save_tokenizer(tok, out / shards.TOKENIZER)
    dtype = shards.token_dtype(VOCAB)
    splits = {name: shards.write_split(out, name, docs, dtype, shard_tokens=shard_tokens, source_bytes=1000)
              for name, docs in (("train", train), ("val", val))}
    shards.write_manifest(out, {
        "schema_version": shards.SCHEMA_VERSION, "dtype": dtype.name, "vocab_size": VOCAB,
        "tokenizer_fingerprint": tokenizer_fingerprint(tok), "inputs_fingerprint": "test",
        "splits": splits, "created": "now", "eot_id": 0,
    })
    return out
