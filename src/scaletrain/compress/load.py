"""Reading what compression starts from, and loading back what it wrote.

A source is a finished run folder: `config.yaml`, `model_config.json` and the weights, either the
consolidated `model.safetensors` or, when that is missing (a run stopped before its export) or
`checkpoint=` names one, a DCP checkpoint. A DCP checkpoint loads into a plain model in one
process with no process group: that is the consolidation of a checkpoint that FSDP/TP ranks wrote
as shards (DCP reads every shard's slice into the full tensor).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from scaletrain.errors import UserError
from scaletrain.untrusted.checkpoint import load_dcp
from scaletrain.untrusted.files import read_json
from scaletrain.untrusted.weights import build_checked, load_weights, save_weights


@dataclass
class Source:
    run_dir: Path
    cfg: object             # scaletrain.config.schema.Config of the run
    model: nn.Module        # fp32, eval mode, on CPU
    spec: dict              # model_config.json
    weights: Path           # the file or checkpoint folder the weights came from


def _first_line(exc: BaseException) -> str:
    """The informative line: torch's load errors open with a header line ending in ':'."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.endswith(":")]
    return (useful or lines or [type(exc).__name__])[0]


def build_from_spec(spec: dict, where: Path) -> nn.Module:
    """An untrained model with the structure model_config.json describes (low-rank factors too),
    refused before allocation when it would not fit in memory."""
    from scaletrain.models import model_from_config_json

    return build_checked(lambda: model_from_config_json(spec), where)


def read_spec(path: Path) -> dict:
    spec = read_json(path, what="a model description (model_config.json)")
    if "name" not in spec or not isinstance(spec.get("args"), dict):
        raise UserError(f'{path}: expected a mapping with "name" and "args" (a model_config.json)')
    return spec


def load_safetensors_into(model: nn.Module, path: Path, spec: dict | None = None) -> None:
    """Strict load: a missing, extra or differently shaped tensor is a UserError naming the file."""
    load_weights(model, path, spec=spec)


def load_checkpoint_into(model: nn.Module, ckpt: Path, spec: dict | None = None) -> None:
    """The model part of a DCP checkpoint (any layout, any world size) into a plain model. Nothing
    but tensors is read: a bytes entry among the model's weights is refused, never unpickled."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    from scaletrain.train.checkpoint import check_model_spec, read_trainer_state, verify_checkpoint

    if not (ckpt / ".metadata").is_file():
        raise UserError(f"{ckpt}: not a checkpoint (no .metadata)")
    problems = verify_checkpoint(ckpt)
    if problems:
        raise UserError(f"checkpoint {ckpt} is damaged: {problems[0]}")
    check_model_spec(ckpt, read_trainer_state(ckpt), spec)
    state = {"model": get_model_state_dict(model)}
    load_dcp(state, ckpt, allow_bytes=False)
    set_model_state_dict(model, state["model"])


def load_source(run: str | Path, checkpoint: str | Path | None = None) -> Source:
    from scaletrain.config.load import load_config
    from scaletrain.train.checkpoint import list_checkpoints

    run_dir = Path(run)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a run folder (no such directory)")
    for name in ("config.yaml", "model_config.json"):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir / name}: missing (is {run_dir} a run folder?)")
    cfg = load_config(str(run_dir / "config.yaml"))
    spec = read_spec(run_dir / "model_config.json")
    if spec["name"] not in ("gpt", "mlp"):
        raise UserError(f"{run_dir / 'model_config.json'}: model {spec['name']!r} cannot be compressed "
                        "(known: gpt, mlp)")
    model = build_from_spec(spec, run_dir / "model_config.json")
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        found = list_checkpoints(ckpt / "checkpoints") or list_checkpoints(ckpt) or [ckpt]
        load_checkpoint_into(model, found[-1], spec)
        weights = found[-1]
    elif (run_dir / "model.safetensors").is_file():
        weights = run_dir / "model.safetensors"
        load_safetensors_into(model, weights, spec)
    else:
        found = list_checkpoints(run_dir / "checkpoints")
        if not found:
            raise UserError(f"{run_dir}: neither model.safetensors nor a checkpoint in checkpoints/")
        weights = found[-1]
        load_checkpoint_into(model, weights, spec)
    if spec.get("lora"):  # a LoRA run: compress the model it trained, adapters merged into the weights
        from scaletrain.models.lora import merge_lora

        merge_lora(model)
        spec = {k: v for k, v in spec.items() if k != "lora"}
    return Source(run_dir=run_dir, cfg=cfg, model=model.float().eval(), spec=spec, weights=weights)


def save_model_dir(model: nn.Module, spec: dict, out: Path, name: str = "model.safetensors") -> Path:
    """`out/name` (tied tensors stored once, the description recorded) and `out/model_config.json`,
    each written atomically."""
    from scaletrain.atomic import write_json_atomic

    path = out / name
    save_weights(model, path, spec=spec)
    write_json_atomic(out / "model_config.json", spec)
    return path


def load_model_dir(out: str | Path) -> nn.Module:
    """The fp32 model of a compressed folder (model.safetensors + model_config.json): pruned,
    factorized and distilled models as they are; quantized ones with their int8-rounded weights.
    For the quantized runtime model use `load_runtime`."""
    out = Path(out)
    spec = read_spec(out / "model_config.json")
    model = build_from_spec(spec, out / "model_config.json")
    load_safetensors_into(model, out / "model.safetensors", spec)
    return model.eval()


def load_runtime(out: str | Path):
    """What a compressed folder runs as: a torchao int8 model (rebuilt from model_int8.safetensors),
    an ONNX Runtime session wrapper (model_int8.onnx) or the plain fp32 model."""
    out = Path(out)
    summary = read_json(out / "summary.json", what="a compressed model's summary")
    method = summary.get("method")
    if method in ("int8-dynamic", "int8-weight"):
        from scaletrain.compress.quantize import load_int8

        return load_int8(out, method)
    if method == "onnx-int8":
        from scaletrain.compress.export import OrtModel

        return OrtModel(out / "model_int8.onnx", threads=torch.get_num_threads())
    return load_model_dir(out)
