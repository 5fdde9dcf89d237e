"""`--lora adapter`: a LoRA run's adapters as a PEFT adapter folder (adapter_config.json +
adapter_model.safetensors), for `peft.PeftModel.from_pretrained(base, DIR)` on top of the
Hugging Face model the run started from (`base_model_name_or_path`).

For a native family the adapters are renamed through the family's mapping: an adapter's B has one
row per output row of its layer, so it takes the same row permutation as the layer's weight (A is
unchanged); a layer HF stores transposed (GPT-2's Conv1D) is marked `fan_in_fan_out`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from scaletrain.errors import UserError
from scaletrain.extras import require
from scaletrain.models import get_family
from scaletrain.models.lora import lora_layers

ADAPTER = "default"  # the adapter name peft gives an injected adapter


def _renames(model: nn.Module, spec: dict) -> dict[str, tuple[str, torch.Tensor | None, bool]]:
    """Our LoRA layer name -> (HF module name, B's row permutation or None, HF transposed)."""
    if spec["name"] == "hf":
        return {name: (name.removeprefix("hf."), None, type(m.get_base_layer()).__name__ == "Conv1D")
                for name, m in lora_layers(model).items()}
    family = get_family(spec["name"])
    args = model.args_dict()
    config = family.hf.config_to_hf(args, spec.get("hf_config"))
    by_ours = {e.ours: e for e in family.hf.tensors(args, config) if e.ours is not None}
    out = {}
    for name in lora_layers(model):
        entry = by_ours.get(f"{name}.weight")
        if entry is None:
            raise UserError(f"--lora adapter: the adapted layer {name} has no Hugging Face counterpart")
        out[name] = (entry.hf.removesuffix(".weight"), entry.rows, entry.transpose)
    return out


def check_adapter(spec: dict, base: str | None) -> None:
    """A PEFT adapter needs adapters and the Hugging Face model they adapt."""
    if not spec.get("lora"):
        raise UserError("--lora adapter: this run trained no LoRA adapters (model.lora); export it with the "
                        "default --lora merged")
    if not base:
        raise UserError("--lora adapter: this run did not start from a Hugging Face model folder (model.init_from "
                        "or model.path), so the adapters have no base model to load onto; use --lora merged")


def write_adapter(model: nn.Module, spec: dict, out: Path, base: str | None) -> dict:
    """Write the adapter folder into `out` (the model still holds its adapters); its summary.
    `base`: the Hugging Face folder the run started from (model.path or model.init_from)."""
    from scaletrain.untrusted.weights import save_tensors

    check_adapter(spec, base)
    lora = spec["lora"]
    peft = require("peft", "hf", "export --lora adapter")
    tensors, targets, transposed = {}, [], set()
    layers = lora_layers(model)
    for name, (hf_name, rows, transpose) in _renames(model, spec).items():
        layer = layers[name]
        a, b = layer.lora_A[ADAPTER].weight.detach(), layer.lora_B[ADAPTER].weight.detach()
        tensors[f"base_model.model.{hf_name}.lora_A.weight"] = a.float().contiguous()
        tensors[f"base_model.model.{hf_name}.lora_B.weight"] = (b if rows is None else b[rows]).float().contiguous()
        targets.append(hf_name)
        transposed.add(transpose)
    if len(transposed) > 1:
        raise UserError("--lora adapter: the adapted layers mix linear and transposed (Conv1D) layers, which one "
                        "PEFT adapter config cannot describe; use --lora merged")
    config = peft.LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                             target_modules=sorted(targets), bias="none", fan_in_fan_out=transposed == {True},
                             task_type="CAUSAL_LM", base_model_name_or_path=base)
    config.save_pretrained(str(out))
    save_tensors(tensors, out / "adapter_model.safetensors")
    return {"adapters": len(targets), "base_model": base}
