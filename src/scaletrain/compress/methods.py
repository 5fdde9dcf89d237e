"""Each method as one function: source model in, compressed model(s) and files out."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from scaletrain.compress.load import build_from_spec, save_model_dir


@dataclass
class Row:
    name: str
    runtime: nn.Module       # what is evaluated and timed
    parameters: int
    size_bytes: int
    extra: dict = field(default_factory=dict)


@dataclass
class Result:
    rows: list[Row]
    summary: dict = field(default_factory=dict)   # merged into summary.json
    notes: dict = field(default_factory=dict)     # one line each in report.md


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _spec(model: nn.Module, base: dict) -> dict:
    return {**base, "args": model.args_dict()}


def _onnx_check(model: nn.Module, out: Path, threads: int) -> float:
    from scaletrain.compress.export import OrtModel, export_onnx, max_abs_diff

    path = export_onnx(model, out / "model.onnx")
    return max_abs_diff(model, OrtModel(path, threads))


def _finish_plain(model: nn.Module, spec: dict, out: Path, opts, name: str, extra: dict | None = None) -> Result:
    """Save a plain fp32 result (pruned, factorized, distilled) and check its ONNX export."""
    path = save_model_dir(model, spec, out)
    summary, notes = {}, {"loading": "model.safetensors + model_config.json load with "
                          "scaletrain.compress.load_model_dir(OUT) or `scaletrain eval OUT`"}
    if opts.onnx:
        summary["onnx_max_abs_diff"] = _onnx_check(model, out, opts.threads)
        notes["onnx"] = (f"model.onnx run under ONNX Runtime: max |logit difference| to PyTorch "
                         f"{summary['onnx_max_abs_diff']:.2e}")
    return Result([Row(name, model, _params(model), path.stat().st_size, extra or {})], summary, notes)


def _finetune(model, src, task, cfg, opts, out: Path, spec: dict, hook=None) -> dict:
    from scaletrain.compress.finetune import train, training_device

    if not opts.finetune_steps:
        return {}
    lr = opts.finetune_lr if opts.finetune_lr is not None else 0.3 * cfg.optim.lr
    s = train(model, cfg, task, opts.finetune_steps, out / "finetune", spec, lr=lr,
              device=training_device(cfg, opts.device))
    return {"finetune_steps": opts.finetune_steps, "finetune_lr": lr, "finetune_train_loss": s.get("train_loss")}


def quantize_torchao(method, src, task, cfg, opts, out) -> Result:
    from scaletrain.compress.quantize import quantize_int8, save_int8

    q = quantize_int8(src.model, method)
    path = save_int8(q, src.model, src.spec, out)
    kind = "int8 activations x int8 weights" if method == "int8-dynamic" else "int8 weights, fp32 activations"
    notes = {"runtime": f"torchao {kind}, per-row weight scales",
             "loading": "model_int8.safetensors (int8 + scales, the size shown) -> "
                        "scaletrain.compress.load_runtime(OUT); model.safetensors holds the same weights "
                        "dequantized to fp32 for plain loaders",
             "onnx": "torchao tensors have no ONNX export; use --method onnx-int8 for an ONNX model"}
    return Result([Row(method, q, _params(src.model), path.stat().st_size)], {}, notes)


def quantize_ort(method, src, task, cfg, opts, out) -> Result:
    from scaletrain.compress.export import OrtModel, export_onnx, max_abs_diff, quantize_onnx_int8

    save_model_dir(src.model, src.spec, out)  # the fp32 weights the ONNX models come from
    fp32 = export_onnx(src.model, out / "model.onnx")
    int8 = quantize_onnx_int8(fp32, out / "model_int8.onnx")
    ort32, ort8 = OrtModel(fp32, opts.threads), OrtModel(int8, opts.threads)
    diffs = {"onnx_max_abs_diff": max_abs_diff(src.model, ort32),
             "onnx_int8_max_abs_diff": max_abs_diff(src.model, ort8)}
    notes = {"runtime": "ONNX Runtime, dynamic int8 (MatMul weights per channel, the embedding Gather "
                        "per tensor; activations quantized per call)",
             "onnx": f"model.onnx (fp32) vs PyTorch: max |diff| {diffs['onnx_max_abs_diff']:.2e}; "
                     f"model_int8.onnx vs PyTorch: {diffs['onnx_int8_max_abs_diff']:.3f}",
             "loading": "model_int8.onnx -> onnxruntime.InferenceSession or scaletrain.compress.load_runtime(OUT); "
                        "model.safetensors is the unquantized source"}
    rows = [Row("onnx-int8", ort8, _params(src.model), int8.stat().st_size),
            Row("onnx-fp32", ort32, _params(src.model), fp32.stat().st_size)]
    return Result(rows, diffs, notes)


def prune_unstructured(method, src, task, cfg, opts, out) -> Result:
    from scaletrain.compress.prune import KeepPruned, magnitude_prune, sparsity

    pruned, masks = magnitude_prune(src.model, opts.amount)
    keeper = KeepPruned(pruned, masks)
    try:
        ft = _finetune(pruned, src, task, cfg, opts, out, src.spec)
    finally:
        keeper.close()
    extra = {"sparsity": sparsity(pruned), **ft}
    result = _finish_plain(pruned, src.spec, out, opts, "prune", extra)
    result.notes["format"] = ("dense tensors with zeros: the file is as large as the original and a dense "
                              "kernel no faster; sparsity is what a sparse format/kernel would use")
    return result


def prune_channels(method, src, task, cfg, opts, out) -> Result:
    from scaletrain.compress.structured import prune_structured

    small = prune_structured(src.model, opts.amount, opts.head_amount)
    spec = _spec(small, src.spec)
    ft = _finetune(small, src, task, cfg, opts, out, spec)
    widths = {k: v for k, v in small.args_dict().items() if k in ("hidden", "layer_heads", "layer_d_ff")}
    return _finish_plain(small, spec, out, opts, "prune-structured", {**widths, **ft})


def lowrank(method, src, task, cfg, opts, out) -> Result:
    from scaletrain.compress.lowrank import factorize

    fm, ranks = factorize(src.model, opts.energy)
    spec = {**src.spec, "factorized": ranks}
    ft = _finetune(fm, src, task, cfg, opts, out, spec)
    return _finish_plain(fm, spec, out, opts, "lowrank", {"ranks": ranks, **ft})


def distill(method, src, task, cfg, opts, out) -> Result:
    import copy

    from scaletrain.compress.distill import DistillationTask, default_student, student_spec
    from scaletrain.compress.finetune import train, training_device

    spec = student_spec(src.spec, opts.student or default_student(src.spec))
    steps = opts.distill_steps or cfg.train.max_steps
    device = training_device(cfg, opts.device)
    # The teacher answers on the student's device; the source model itself stays on the CPU, where
    # it is evaluated and timed.
    teacher = src.model if device.type == "cpu" else copy.deepcopy(src.model).to(device)

    def fresh() -> nn.Module:
        torch.manual_seed(cfg.train.seed)  # the same initial student for both runs
        return build_from_spec(spec, out / "model_config.json")

    student = fresh()
    kd = DistillationTask(task, teacher, temperature=opts.temperature, alpha=opts.alpha, device=device)
    s = train(student, cfg, kd, steps, out / "distill", spec, device=device)
    del kd, teacher
    extra = {"steps": steps, "train_loss": s.get("train_loss")}
    result = _finish_plain(student, spec, out, opts, "distilled", extra)
    result.summary["student"] = spec["args"]
    if opts.baseline:
        scratch = fresh()
        s2 = train(scratch, cfg, task, steps, out / "scratch", spec, device=device)
        result.rows.append(Row("scratch", scratch, _params(scratch), result.rows[0].size_bytes,
                               {"steps": steps, "train_loss": s2.get("train_loss")}))
        result.notes["baseline"] = ("`scratch`: the same student, same initial weights, data and steps, "
                                    "trained on the labels alone")
    return result


def quantize_dynamic(method, src, task, cfg, opts, out) -> Result:
    """int8 weights and activations with the runtime that is fastest on this CPU (compress.backend):
    torchao's files and runtime, or ONNX Runtime's (as onnx-int8)."""
    from scaletrain.compress.backend import choose

    backend, why = choose(opts.backend)
    if backend == "torchao":
        result = quantize_torchao(method, src, task, cfg, opts, out)
    else:
        result = quantize_ort(method, src, task, cfg, opts, out)
        result.rows[0].name = method
    result.summary.update(int8_backend=backend, int8_backend_reason=why)
    result.notes["backend"] = f"{backend}: {why}"
    return result


_APPLY = {"int8-dynamic": quantize_dynamic, "int8-weight": quantize_torchao, "onnx-int8": quantize_ort,
          "prune": prune_unstructured, "prune-structured": prune_channels, "lowrank": lowrank,
          "distill": distill}


def apply(method: str, src, task, cfg, opts, out: Path) -> Result:
    return _APPLY[method](method, src, task, cfg, opts, out)
