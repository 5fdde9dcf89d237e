"""A scaletrain model as a `transformers` model: through the family's name mapping for the native
families (`models/<family>/hf.py`), as it is for `model.name=hf`. Low-rank factors are multiplied
back and LoRA adapters merged first: `transformers`' architectures have neither.

The result is checked before anything is written: both models run on the same tokens, and logits
that differ by more than `TOLERANCE` (relative to the logits' scale) are a failure, not a file.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from scaletrain.errors import RunFailure, UserError
from scaletrain.extras import require
from scaletrain.models import get_family
from scaletrain.models.hfmap import to_hf_state

log = logging.getLogger(__name__)

# fp32 logits of the same function computed in another order differ by ~1e-6 on small models;
# a wrong mapping differs by the logits' own scale.
TOLERANCE = 1e-4


def plain(model: nn.Module, spec: dict) -> nn.Module:
    """The model without scaletrain-only structure: adapters merged, low-rank factors multiplied."""
    if spec.get("lora"):
        from scaletrain.models.lora import merge_lora

        merge_lora(model)
    if spec.get("factorized"):
        from scaletrain.models.lowrank import densify

        log.warning("warning: the low-rank factors are multiplied back into dense matrices (transformers has "
                    "no factorized layers): the export holds the factorized model's function at the original size")
        densify(model, spec["factorized"])
    return model


def transformers_model(model: nn.Module, spec: dict, token_ids: dict[str, int]) -> nn.Module:
    """The `transformers` model holding `model`'s weights (a plain model: see `plain`)."""
    require("transformers", "hf", "export --format hf")
    if spec["name"] == "hf":
        return model.hf
    family = get_family(spec["name"])
    if family.hf is None:
        raise UserError(f"model {spec['name']!r} has no Hugging Face architecture to export to (gpt: GPT-2 or "
                        "GPT-NeoX, llama: LlamaForCausalLM, hf: its own)")
    args = model.args_dict()
    base = spec.get("hf_config")
    config = family.hf.config_to_hf(args, base)
    if not base:  # the tokenizer's special tokens, unless the folder the run started from said
        config.update(token_ids)
    entries = family.hf.tensors(args, config)
    state = to_hf_state(entries, model.state_dict())
    hf_model = _build(config)
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k in _tied_names(hf_model)}
    if set(missing) - tied or unexpected:
        raise RunFailure(f"export: the {config['architectures'][0]} mapping of model {spec['name']!r} does not fit "
                         f"transformers' (missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    return hf_model.eval()


def _build(config: dict) -> nn.Module:
    from scaletrain.models.hf.model import hf_config

    import transformers

    return transformers.AutoModelForCausalLM.from_config(hf_config(config), trust_remote_code=False).float()


def _tied_names(hf_model: nn.Module) -> set[str]:
    keys = getattr(hf_model, "_tied_weights_keys", None) or {}
    return set(keys) if hf_model.config.tie_word_embeddings else set()


@torch.no_grad()
def logits_difference(ours: nn.Module, hf_model: nn.Module, vocab: int, seq_len: int, seed: int = 0) -> float:
    """max |logit difference| of the two models on the same random tokens (fp32, eval mode)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, max(2, min(seq_len, 32))), generator=gen)
    ours.eval()
    hf_model.eval()
    a = ours(ids)
    a = a.logits if hasattr(a, "logits") else a
    b = hf_model(input_ids=ids).logits
    return float((a.float() - b.float()).abs().max() / max(1.0, float(a.abs().max())))


def check(ours: nn.Module, hf_model: nn.Module, vocab: int, seq_len: int) -> float:
    diff = logits_difference(ours, hf_model, vocab, seq_len)
    if not diff <= TOLERANCE:
        raise RunFailure(f"export: transformers' logits differ from scaletrain's by {diff:.2e} (relative; at most "
                         f"{TOLERANCE:g} expected): nothing was written")
    return diff
