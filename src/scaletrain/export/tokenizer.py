"""The run's tokenizer as `transformers` files: tokenizer.json (the same vocabulary and merges) and
tokenizer_config.json (its special tokens), written by `PreTrainedTokenizerFast.save_pretrained`
so that `AutoTokenizer.from_pretrained(DIR)` loads them."""

from __future__ import annotations

from pathlib import Path

from scaletrain.data.tokenizer import EOT, load_tokenizer
from scaletrain.errors import UserError
from scaletrain.untrusted.hf import TOKEN_KEYS, read_tokenizer_config


def special_tokens(run: Path) -> dict:
    """The run's special tokens: those of the model folder it started from (its
    tokenizer_config.json, copied into the run), else scaletrain's own `<|endoftext|>`, which
    ends every document and serves as bos/unk too (the byte-level BPE has no other)."""
    tokens = read_tokenizer_config(run)
    if not any(k in tokens for k in TOKEN_KEYS):
        tokens = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, **tokens}
    return tokens


def token_ids(run: Path) -> dict[str, int]:
    """bos/eos/pad token ids for config.json, from the run's tokenizer."""
    tok = load_tokenizer(run / "tokenizer.json")
    out = {}
    for key, value in special_tokens(run).items():
        if key in ("bos_token", "eos_token", "pad_token") and isinstance(value, str):
            i = tok.token_to_id(value)
            if i is not None:
                out[f"{key}_id"] = i
    return out


def write_tokenizer(run: Path, out: Path) -> None:
    """tokenizer.json + tokenizer_config.json (+ special_tokens_map.json) into `out`."""
    from scaletrain.extras import require

    require("transformers", "hf", "export --format hf")
    from transformers import PreTrainedTokenizerFast

    path = run / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{path}: missing; the export writes the run's tokenizer beside its weights")
    load_tokenizer(path)  # a damaged file is one error line, before transformers reads it
    fast = PreTrainedTokenizerFast(tokenizer_file=str(path), **special_tokens(run))
    fast.save_pretrained(str(out))
