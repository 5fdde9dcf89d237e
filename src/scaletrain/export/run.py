"""`export_run(run, format, out)`: read a run-like folder, write the export atomically.

The source is a finished run or a compressed model (`model_config.json` + `model.safetensors` +
`tokenizer.json`, read through scaletrain.untrusted). The output is built in a hidden folder beside
`out` and renamed into place once complete and checked: `out` is either absent or whole, and an
existing non-empty `out` is refused before any work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

from scaletrain.atomic import check_target, make_temp_dir, write_bytes_atomic
from scaletrain.errors import UserError
from scaletrain.export import FORMATS, LORA_MODES

log = logging.getLogger(__name__)


def _check(run: Path, fmt: str, out: Path, lora: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if lora not in LORA_MODES:
        raise UserError(f"--lora: {lora!r} is not one of {', '.join(LORA_MODES)}")
    if lora == "adapter" and fmt != "hf":
        raise UserError("--lora adapter: a PEFT adapter folder is a Hugging Face format; use it with --format hf")
    if not run.is_dir():
        raise UserError(f"{run}: not a run folder (no such directory)")
    for name in ("model_config.json", "model.safetensors"):
        if not (run / name).is_file():
            raise UserError(f"{run / name}: missing (is {run} a finished run or a compressed model?)")
    check_target(out, "--out", folder=True)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out: {out} already exists and is not empty; choose a new folder")


def _base_folder(run: Path) -> str | None:
    """The Hugging Face folder the run started from (config.yaml's model.init_from or model.path)."""
    from scaletrain.config.load import read_yaml_file

    try:
        raw = read_yaml_file(run / "config.yaml")
    except UserError:
        return None
    model = raw.get("model") if isinstance(raw, dict) else None
    path = (model.get("init_from") or model.get("path")) if isinstance(model, dict) else None
    if not isinstance(path, str):
        return None
    folder = Path(path).expanduser()
    return str(folder.resolve()) if folder.is_dir() else path


def export_run(run: str | Path, fmt: str, out: str | Path, *, lora: str = "merged") -> dict:
    """Export `run` as `fmt` into the new folder `out`; return what was written (a summary)."""
    from scaletrain.models.folder import read_model_dir

    run, out = Path(run), Path(out).expanduser()
    _check(run, fmt, out, lora)
    spec, model = read_model_dir(run)
    model = model.float().eval()
    if lora == "adapter":
        from scaletrain.export.adapter import check_adapter

        check_adapter(spec, _base_folder(run))
    out.parent.mkdir(parents=True, exist_ok=True)
    times = (out.parent.stat().st_atime_ns, out.parent.stat().st_mtime_ns)
    tmp = make_temp_dir(out.parent, prefix=f".{out.name}.tmp-")
    try:
        if fmt == "onnx":
            summary = _onnx(model, spec, run, tmp)
        elif lora == "adapter":
            summary = _adapter(model, spec, run, tmp)
        else:
            summary = _hf(model, spec, run, tmp)
        if out.exists():  # an empty folder made for it: replaced by the finished one
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):  # a failed export leaves the folder as it found it
            os.utime(out.parent, ns=times)
        raise
    return {"out": str(out), "format": fmt, **summary}


def _hf(model, spec: dict, run: Path, tmp: Path) -> dict:
    from scaletrain.export.hf import check, plain, transformers_model
    from scaletrain.export.tokenizer import token_ids, write_tokenizer

    if not (run / "tokenizer.json").is_file():
        raise UserError(f"{run / 'tokenizer.json'}: missing; the export writes the run's tokenizer beside its weights")
    model = plain(model, spec)
    hf_model = transformers_model(model, spec, token_ids(run))
    diff = check(model, hf_model, model.args.vocab_size, model.args.seq_len)
    if spec["name"] == "hf" and spec["args"].get("dtype") == "bfloat16":
        hf_model = hf_model.bfloat16()  # the dtype the run trained in
    _save_pretrained(hf_model, tmp)
    write_tokenizer(run, tmp)
    return {"architecture": type(hf_model).__name__, "parameters": sum(p.numel() for p in hf_model.parameters()),
            "max_logit_difference": diff, "lora": "merged" if spec.get("lora") else None}


def _save_pretrained(hf_model, folder: Path) -> None:
    """config.json, model.safetensors (`format: pt`) and generation_config.json, without
    transformers' progress bar (library code does not draw on the terminal)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        hf_model.save_pretrained(str(folder))
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _adapter(model, spec: dict, run: Path, tmp: Path) -> dict:
    from scaletrain.export.adapter import write_adapter
    from scaletrain.export.tokenizer import write_tokenizer

    summary = write_adapter(model, spec, tmp, _base_folder(run))
    if (run / "tokenizer.json").is_file():
        write_tokenizer(run, tmp)
    return {"lora": "adapter", **summary}


def _onnx(model, spec: dict, run: Path, tmp: Path) -> dict:
    from scaletrain.compress.export import OrtModel, export_onnx, max_abs_diff
    from scaletrain.export.hf import plain

    model = plain(model, spec)
    path = export_onnx(model, tmp / "model.onnx")
    diff = max_abs_diff(model, OrtModel(path))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (run / name).is_file():
            write_bytes_atomic(tmp / name, (run / name).read_bytes())
    return {"onnx_max_abs_diff": diff, "lora": "merged" if spec.get("lora") else None}
