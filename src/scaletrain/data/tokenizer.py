"""Byte-level BPE tokenizer (HF `tokenizers`): train, save, load, fingerprint."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import xxhash
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from scaletrain.atomic import write_bytes_atomic
from scaletrain.errors import UserError

EOT = "<|endoftext|>"
# 256 byte symbols + EOT: below this BPE cannot represent every input.
MIN_VOCAB_SIZE = 257
MAX_TOKENIZER_BYTES = 256 << 20


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE on `texts`; same input gives the same tokenizer JSON."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise UserError(f"vocab_size must be at least {MIN_VOCAB_SIZE}, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[EOT],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    """Write the tokenizer JSON atomically."""
    write_bytes_atomic(Path(path), tok.to_str().encode("utf-8"))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer JSON; UserError naming the file if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"tokenizer file {path} not found")
    size = path.stat().st_size
    if size > MAX_TOKENIZER_BYTES:  # a 256k-token vocabulary with its merges is ~20 MB
        raise UserError(f"tokenizer file {path}: {size:,} bytes, larger than any tokenizer")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises plain Exception for any parse error
        raise UserError(f"tokenizer file {path} is corrupt: {e}") from None


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    """xxh3_128 hex digest of the tokenizer's canonical JSON."""
    return xxhash.xxh3_128_hexdigest(tok.to_str().encode("utf-8"))


def eot_id(tok: Tokenizer, token: str | None = None) -> int:
    """Id of the end-of-text token (`token`, by default `<|endoftext|>`)."""
    token = token or EOT
    i = tok.token_to_id(token)
    if i is None:
        raise UserError(f"tokenizer has no {token} token")
    return int(i)
