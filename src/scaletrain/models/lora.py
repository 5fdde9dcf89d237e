"""LoRA (`model.lora.*`) with `peft`, the library the field uses, on any family's plain module.

`apply_lora` injects adapters in place (`peft.inject_adapter_in_model`): each target layer becomes
peft's LoRA layer, holding the frozen original as `base_layer` and the trained `lora_A` / `lora_B`,
so the model keeps its class, its forward and its blocks (the parallel plans, FSDP units and
activation checkpointing apply unchanged). Every parameter but the adapters' is frozen: the
optimizer, its state and its checkpoints hold the adapters only. The description
(`lora_spec`: rank, alpha, dropout, target modules) is recorded in model_config.json beside the
model's args, so a LoRA run rebuilds with its adapters; `merge_lora` folds them into the weights
(W + alpha/rank·B·A) for export.
"""

from __future__ import annotations

from torch import nn

from scaletrain.errors import UserError
from scaletrain.extras import require
from scaletrain.models.lowrank import set_submodule

_KEYS = ("rank", "alpha", "dropout", "target_modules")


def _adaptable(module: nn.Module) -> bool:
    """A layer peft's LoRA adapts: nn.Linear, or transformers' Conv1D (GPT-2)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def default_targets(model: nn.Module, plan) -> list[str]:
    """Every linear layer of the model's blocks, by its name inside a block (`attn.qkv`), as
    QLoRA recommends; embeddings and the output head stay frozen."""
    blocks = plan.blocks(model) if plan is not None else None
    if not blocks:
        raise UserError("model.lora.target_modules: this model has no repeated blocks in which to find its "
                        "linear layers; name the layers to adapt")
    names = [name for name, m in blocks[0].named_modules() if name and _adaptable(m)]
    if not names:
        raise UserError("model.lora.target_modules: the model's blocks hold no linear layer; name the layers to adapt")
    return names


def lora_spec(section, model: nn.Module, plan) -> dict:
    """What model_config.json records of `model.lora`: every value explicit."""
    return {"rank": section.rank, "alpha": float(section.alpha or section.rank), "dropout": section.dropout,
            "target_modules": list(section.target_modules or default_targets(model, plan))}


def _checked(spec: object) -> dict:
    """A recorded description (model_config.json may come from outside): keys and types checked."""
    if not isinstance(spec, dict) or set(spec) != set(_KEYS):
        raise UserError(f"model config: lora must be an object with the keys {list(_KEYS)}")
    rank, alpha, dropout, targets = (spec[k] for k in _KEYS)
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 < rank <= 1 << 17:
        raise UserError(f"model config: lora.rank must be a positive integer, got {rank!r:.40}")
    for key, value, low_open in (("alpha", alpha, True), ("dropout", dropout, False)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0 \
                or (low_open and value == 0) or (key == "dropout" and value >= 1) or value == float("inf"):
            raise UserError(f"model config: lora.{key} out of range, got {value!r:.40}")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise UserError("model config: lora.target_modules must be a list of module names")
    return spec


def apply_lora(model: nn.Module, spec: dict) -> nn.Module:
    """Inject LoRA adapters into `model` in place and freeze everything else."""
    peft = require("peft", "hf", "model.lora")
    spec = _checked(spec)
    targets = spec["target_modules"]
    conv1d = any(type(m).__name__ == "Conv1D" for name, m in model.named_modules()
                 if any(name == t or name.endswith("." + t) for t in targets))
    config = peft.LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=spec["dropout"],
                             target_modules=list(targets), bias="none", fan_in_fan_out=conv1d)
    try:
        peft.inject_adapter_in_model(config, model)
    except ValueError as exc:
        raise UserError(f"model.lora.target_modules: {targets} ({str(exc).splitlines()[0][:200]})") from None
    for name, p in model.named_parameters():
        p.requires_grad = ".lora_" in name
    return model


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's LoRA layers by name (empty without adapters)."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer's weight (W + alpha/rank·B·A) and put the plain layer back:
    the model's own structure and parameter names again, all trainable."""
    for name, layer in lora_layers(model).items():
        layer.merge()
        set_submodule(model, name, layer.get_base_layer())
    for p in model.parameters():
        p.requires_grad = True
    return model
