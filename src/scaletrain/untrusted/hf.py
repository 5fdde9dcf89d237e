"""Hugging Face model folders (`model.name=hf model.path=DIR`, `model.init_from=DIR`): config.json,
safetensors weights and tokenizer files, read as data only.

A model folder is downloaded from anywhere, and `transformers` can run code shipped in it
(`trust_remote_code`, `auto_map`) or unpickle `pytorch_model.bin`. Neither happens here: the
config is read as JSON (its `auto_map` dropped: the architecture must be one `transformers` itself
defines), weights come only from safetensors files (a folder with only `.bin`/`.pt` weights is
refused, naming the file), tensor names and file names in an index are checked, and the tokenizer
is a `tokenizer.json` (plain JSON, parsed by `tokenizers`' Rust code) plus the special-token
strings of `tokenizer_config.json`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from scaletrain.errors import UserError
from scaletrain.untrusted.files import field, inside, read_json
from scaletrain.untrusted.weights import _first_line, read_header

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.bin", "consolidated.00.pth")
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# The tokenizer_config.json keys kept (strings and flags; never a class to instantiate).
TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
FLAG_KEYS = ("add_bos_token", "add_eos_token", "clean_up_tokenization_spaces")
MAX_INDEX_FILES = 100_000


def read_config(folder: Path) -> dict:
    """config.json of a model folder: a JSON object with a `model_type`; `auto_map` (code to run)
    is dropped."""
    path = folder / CONFIG
    config = read_json(path, what="a transformers model config (config.json)")
    field(config, "model_type", str, path)
    config = {k: v for k, v in config.items() if k != "auto_map"}  # code to run: never (see `names_code`)
    if "architectures" in config and not (isinstance(config["architectures"], list)
                                         and all(isinstance(a, str) for a in config["architectures"])):
        raise UserError(f"{path}: 'architectures' must be a list of names")
    return config


def names_code(folder: Path) -> bool:
    """Whether config.json names code shipped in the folder (`auto_map`), which `read_config` drops."""
    return "auto_map" in read_json(folder / CONFIG, what="a transformers model config (config.json)")


def architecture(config: dict) -> str:
    """The class config.json names (`LlamaForCausalLM`), or its model_type when it names none."""
    names = config.get("architectures") or []
    return names[0] if names else config["model_type"]


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files holding the folder's weights (one, or those an index names); [] when
    there are none (a config-only folder: the model starts from random weights). A folder with
    pickled weights only is refused: they could run code when loaded."""
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    if (folder / INDEX).is_file():
        index = read_json(folder / INDEX, what="a safetensors index (model.safetensors.index.json)")
        weight_map = field(index, "weight_map", dict, folder / INDEX)
        names = sorted(set(weight_map.values()), key=str)
        if len(names) > MAX_INDEX_FILES:
            raise UserError(f"{folder / INDEX}: names {len(names):,} files")
        files = [inside(folder, name, what=INDEX) for name in names]
        for f in files:
            if not f.name.endswith(".safetensors"):
                raise UserError(f"{folder / INDEX}: names {f.name!r}, not a safetensors file")
            if not f.is_file():
                raise UserError(f"{f}: missing (named by {INDEX})")
        return files
    pickled = [name for name in PICKLED if (folder / name).exists()] + sorted(
        p.name for p in folder.glob("*.bin") if p.is_file())
    if pickled:
        raise UserError(f"{folder / pickled[0]}: pickled weights are refused (loading them can run code); "
                        "convert them to safetensors where you trust them (model.safetensors)")
    return []


class Tensors(Mapping):
    """The tensors of safetensors files by name, read one at a time (never all at once)."""

    def __init__(self, files: list[Path]):
        self.files = files
        self.where: dict[str, Path] = {}
        self.shapes: dict[str, list[int]] = {}
        for f in files:
            _, header = read_header(f)
            for name, (_, shape) in header.items():
                if name in self.where:
                    raise UserError(f"{f}: tensor {name!r} is also in {self.where[name]}")
                self.where[name], self.shapes[name] = f, shape

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        try:
            with safe_open(str(self.where[name]), "pt") as f:
                return f.get_tensor(name)
        except KeyError:
            raise
        except (OSError, MemoryError):
            raise
        except Exception as exc:  # a header that lies about offsets, a truncated file
            raise UserError(f"{self.where[name]}: tensor {name!r} cannot be read ({_first_line(exc)})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.where)

    def __len__(self) -> int:
        return len(self.where)


def read_tokenizer_config(folder: Path) -> dict:
    """The special tokens (strings) and flags of tokenizer_config.json; {} without one."""
    path = folder / TOKENIZER_CONFIG
    if not path.is_file():
        return {}
    raw = read_json(path, what="a tokenizer config (tokenizer_config.json)")
    out: dict = {}
    for key in TOKEN_KEYS:
        value = raw.get(key)
        if isinstance(value, dict):  # {"content": "</s>", "lstrip": false, ...}
            value = value.get("content")
        if isinstance(value, str) and 0 < len(value) <= 200:
            out[key] = value
    for key in FLAG_KEYS:
        if isinstance(raw.get(key), bool):
            out[key] = raw[key]
    template = raw.get("chat_template")
    if isinstance(template, str) and len(template) <= 1 << 20:
        out["chat_template"] = template  # a Jinja template: text, rendered in a sandbox by transformers
    return out


def end_of_text(folder: Path, tokenizer, config: dict) -> str:
    """The token that ends a document, as the model knows it: tokenizer_config.json's eos_token,
    else config.json's eos_token_id, else `<|endoftext|>`."""
    eos = read_tokenizer_config(folder).get("eos_token")
    if eos is None:
        ids = config.get("eos_token_id")
        ids = ids if isinstance(ids, list) else [ids]
        for i in ids:
            if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < tokenizer.get_vocab_size():
                eos = tokenizer.id_to_token(i)
                break
    eos = eos or "<|endoftext|>"
    if tokenizer.token_to_id(eos) is None:
        raise UserError(f"{folder}: the end-of-text token {eos!r} (tokenizer_config.json eos_token or config.json "
                        "eos_token_id) is not in tokenizer.json; documents could not be separated")
    return eos
