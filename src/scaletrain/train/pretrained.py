"""A run that starts from a Hugging Face model folder (`model.name=hf model.path=DIR`, or a native
family's `model.init_from=DIR`): its tokenizer for the data, its weights into the built model, and
LoRA adapters on top (`model.lora`). Every file is read through scaletrain.untrusted.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from scaletrain.data.tokenizer import load_tokenizer
from scaletrain.errors import UserError
from scaletrain.models.family import ModelFamily
from scaletrain.models.hfmap import check_shapes, from_hf_state
from scaletrain.untrusted import hf as folder_files

log = logging.getLogger(__name__)


def model_folder(cfg) -> Path | None:
    """The Hugging Face folder the configured model starts from, or None."""
    weights_folder = getattr(cfg.model, "weights_folder", None)
    folder = weights_folder() if weights_folder is not None else None
    return Path(folder).expanduser() if folder else None


@dataclass
class FolderTokenizer:
    path: Path  # the folder's tokenizer.json
    eot: str  # the token that ends a document
    config: dict = field(default_factory=dict)  # tokenizer_config.json's special tokens and flags


def folder_tokenizer(cfg) -> FolderTokenizer | None:
    """The model folder's tokenizer (the data is tokenized with it), or None: the data's own."""
    folder = model_folder(cfg)
    if folder is None:
        return None
    if not (folder / folder_files.TOKENIZER).is_file():
        return None  # the data's own (build_trainer says so once the start is checked)
    tok = load_tokenizer(folder / folder_files.TOKENIZER)
    eot = folder_files.end_of_text(folder, tok, folder_files.read_config(folder))
    config = {**folder_files.read_tokenizer_config(folder), "eos_token": eot}
    return FolderTokenizer(folder / folder_files.TOKENIZER, eot, config)


def check_vocabulary(model: nn.Module, tokens: int, where: Path | None) -> None:
    """The data's tokenizer must fit the model's embedding (an HF vocabulary is often padded)."""
    vocab = getattr(getattr(model, "args", None), "vocab_size", None)
    if vocab is not None and tokens > vocab:
        source = f"{where}'s tokenizer" if where is not None else f"the data's tokenizer (data.vocab_size)"
        raise UserError(f"{source} has {tokens} tokens, more than the model's {vocab} embeddings")


def folder_weights(cfg, family: ModelFamily) -> folder_files.Tensors | None:
    """The model folder's safetensors weights, their files and headers checked (before the model is
    built: a folder that cannot be read is refused before any work); None: no folder, or a
    `model.name=hf` folder that holds only a config (the model keeps its random initialisation)."""
    folder = model_folder(cfg)
    if folder is None:
        return None
    files = folder_files.weight_files(folder)
    if not files:
        if family.hf is not None:
            raise UserError(f"model.init_from: {folder} holds no model.safetensors to start from")
        return None
    return folder_files.Tensors(files)


def load_folder_weights(model: nn.Module, tensors: folder_files.Tensors | None, cfg, family: ModelFamily) -> None:
    """Fill `model` from its folder's weights (`folder_weights`): every tensor of the file used,
    every weight of the model filled, shapes checked first."""
    folder = model_folder(cfg)
    if tensors is None:
        log.warning("warning: %s holds no weights (model.safetensors): the model starts from random weights "
                    "(train.seed)", folder)
        return
    with torch.no_grad():
        if family.hf is None:
            _load_own_names(model.hf, tensors, folder)
        else:
            _load_mapped(model, tensors, folder, family, folder_files.read_config(folder))
    log.info("loaded %d tensors from %s", len(tensors), folder)


def _load_own_names(hf_model: nn.Module, tensors: folder_files.Tensors, folder: Path) -> None:
    """A `transformers` checkpoint into its own class: names as they are (or without the base
    model's prefix, as files saved from the base model have them), shapes checked first."""
    expected = hf_model.state_dict()
    prefix = f"{getattr(hf_model, 'base_model_prefix', '')}."
    ignore = [re.compile(p) for p in (getattr(hf_model, "_keys_to_ignore_on_load_unexpected", None) or ())]

    def target(name: str) -> str | None:
        return name if name in expected else prefix + name if prefix + name in expected else None

    unexpected = [n for n in tensors if target(n) is None and not any(p.search(n) for p in ignore)]
    if unexpected:
        raise UserError(f"{folder}: tensor {unexpected[0]!r} ({len(unexpected)} unexpected) has no place in the "
                        f"{type(hf_model).__name__} its config.json describes")
    for name, shape in tensors.shapes.items():
        t = target(name)
        if t is not None and list(expected[t].shape) != shape:
            raise UserError(f"{folder}: {name} has shape {shape}, but the {type(hf_model).__name__} its "
                            f"config.json describes has {list(expected[t].shape)}")
    filled = {target(n): n for n in tensors if target(n) is not None}
    for t, name in filled.items():
        expected[t].copy_(tensors[name])
    _check_filled(expected, set(filled), folder)


def _load_mapped(model: nn.Module, tensors: folder_files.Tensors, folder: Path, family: ModelFamily,
                 config: dict) -> None:
    """A `transformers` checkpoint into a native family, through its `hf.py` names."""
    entries = family.hf.tensors(model.args_dict(), config)
    expected = model.state_dict()
    where = str(folder)
    prefix = entries[0].hf.split(".")[0] + "."  # the base model's: `model.`, `transformer.`
    check_shapes(entries, tensors.shapes, {k: v.shape for k, v in expected.items()}, where, prefix)
    filled = set()
    for ours, tensor in from_hf_state(entries, tensors.__getitem__, set(tensors), where, family.hf.ignored, prefix):
        expected[ours].copy_(tensor)
        filled.add(ours)
    _check_filled(expected, filled, folder)


def _check_filled(expected: dict[str, torch.Tensor], filled: set[str], folder: Path) -> None:
    """Every weight came from the file (a tied one through the tensor it shares)."""
    shared = {expected[name].data_ptr() for name in filled}
    unset = [name for name, t in expected.items() if name not in filled and t.data_ptr() not in shared]
    if unset:
        raise UserError(f"{folder}: holds no weights for {unset[0]!r} ({len(unset)} tensors of the model left unset)")


def add_lora(model: nn.Module, cfg, family: ModelFamily) -> dict | None:
    """`model.lora`: adapters injected into `model` (everything else frozen); their description."""
    section = getattr(cfg.model, "lora", None)
    if section is None:
        return None
    from scaletrain.models.lora import apply_lora, lora_spec

    spec = lora_spec(section, model, family.plan)
    apply_lora(model, spec)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LoRA rank %d on %s: %s trainable parameters of %s", spec["rank"], ", ".join(spec["target_modules"]),
             f"{trained:,}", f"{sum(p.numel() for p in model.parameters()):,}")
    return spec


def sync_section(section, args: dict) -> None:
    """Make the config's model section say what `model.init_from` built (config.yaml tells the
    truth): every key of the section that the args decide."""
    from scaletrain.models.start import START_KEYS

    for key in type(section).model_fields:
        if key in args and key not in START_KEYS and getattr(section, key) != args[key]:
            try:
                setattr(section, key, args[key])
            except ValueError:  # a value the section spells otherwise (e.g. a nested section)
                pass
