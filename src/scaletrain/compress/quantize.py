"""int8 quantization through torchao: dynamic (int8 activations x int8 weights) and weight-only.

torchao replaces each Linear weight by an `Int8Tensor` (per-output-row symmetric scale). Its
tensors are not safetensors-serializable, so a result is stored twice, both without pickle:

- `model_int8.safetensors`: every quantized weight as int8 (`NAME`) plus its fp32 row scales
  (`NAME.scale`), everything else fp32: the deployable size, reported as the size on disk;
- `model.safetensors`: the same weights dequantized (int8 x scale) in fp32, so the generic loaders
  (`scaletrain eval`) read the folder and see the int8 rounding.

`load_int8` rebuilds the runtime model: dequantized weights, torchao again, then the stored int8
values and scales copied into its tensors (the model saved, bit for bit).
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from scaletrain.extras import require

METHODS = {"int8-dynamic", "int8-weight"}


def _config(method: str):
    q = require("torchao.quantization", "compress", f"compress --method {method}")
    return q.Int8DynamicActivationInt8WeightConfig() if method == "int8-dynamic" else q.Int8WeightOnlyConfig()


def quantize_int8(model: nn.Module, method: str) -> nn.Module:
    """A torchao-quantized copy of `model` (every nn.Linear). A GPT's embedding, tied to the
    quantized LM head, takes the head's dequantized weights: the tied matrix is stored once, in
    int8, and the lookup sees the same numbers as the head."""
    quantize_ = require("torchao.quantization", "compress", f"compress --method {method}").quantize_

    if method not in METHODS:
        raise ValueError(f"unknown int8 method {method!r}")
    q = copy.deepcopy(model).eval()
    tied = getattr(getattr(q, "args", None), "tie_embeddings", False) and hasattr(q, "tok_emb")
    quantize_(q, _config(method))
    if tied:
        q.tok_emb.weight = nn.Parameter(q.lm_head.weight.dequantize().detach().clone(), requires_grad=False)
    return q


def _is_int8(t) -> bool:
    return hasattr(t, "qdata") and hasattr(t, "scale")


def int8_tensors(q: nn.Module) -> dict[str, torch.Tensor]:
    """The storage form: int8 weights + row scales; other tensors fp32; a tied matrix once."""
    out: dict[str, torch.Tensor] = {}
    tied = hasattr(q, "tok_emb") and getattr(q.args, "tie_embeddings", False)
    for name, t in q.state_dict().items():
        if _is_int8(t):
            out[name] = t.qdata.contiguous()
            out[f"{name}.scale"] = t.scale.float().reshape(-1).contiguous()
        elif not (tied and name == "tok_emb.weight"):  # the LM head's int8 copy stands for it
            out[name] = t.detach().contiguous()
    return out


def dequantized(q: nn.Module, model: nn.Module) -> nn.Module:
    """A plain fp32 copy of `model` carrying q's int8-rounded weights."""
    plain = copy.deepcopy(model)
    with torch.no_grad():
        sd = {k: (v.dequantize() if _is_int8(v) else v) for k, v in q.state_dict().items()}
        plain.load_state_dict(sd)
    return plain


def save_int8(q: nn.Module, model: nn.Module, spec: dict, out: Path) -> Path:
    from safetensors.torch import save_file

    from scaletrain.atomic import atomic_path
    from scaletrain.compress.load import save_model_dir

    path = out / "model_int8.safetensors"
    with atomic_path(path) as tmp:
        save_file(int8_tensors(q), str(tmp), metadata={"format": "int8 rows + fp32 scales (NAME.scale)"})
    save_model_dir(dequantized(q, model), spec, out)
    return path


def load_int8(out: Path, method: str) -> nn.Module:
    from safetensors.torch import load_file

    from scaletrain.compress.load import build_from_spec, read_spec

    from scaletrain.untrusted.weights import read_header

    spec = read_spec(out / "model_config.json")
    model = build_from_spec(spec, out / "model_config.json")
    read_header(out / "model_int8.safetensors")  # a damaged file: one line naming it
    stored = load_file(str(out / "model_int8.safetensors"))
    sd = {}
    for name, t in stored.items():
        if name.endswith(".scale") and name[: -len(".scale")] in stored:
            continue
        scale = stored.get(f"{name}.scale")
        sd[name] = t.float() * scale[:, None] if scale is not None else t
    if "tok_emb.weight" not in sd and "lm_head.weight" in sd:
        sd["tok_emb.weight"] = sd["lm_head.weight"]
    model.load_state_dict(sd)
    q = quantize_int8(model.eval(), method)
    # Re-quantizing a dequantized row can move its extreme entry by one step (torchao's scale is
    # amax / 127.5): put the stored int8 values and scales back so the model is the one saved.
    with torch.no_grad():
        for name, t in q.state_dict().items():
            if _is_int8(t) and name in stored:
                t.qdata.copy_(stored[name])
                t.scale.copy_(stored[f"{name}.scale"].view_as(t.scale))
        if "tok_emb.weight" not in stored and hasattr(q, "tok_emb"):  # tied: the head's values again
            q.tok_emb.weight.copy_(q.lm_head.weight.dequantize())
    return q
