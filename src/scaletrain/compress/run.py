"""`compress(run, method, out, ...)`: one method applied to a finished run, measured, reported.

The output folder is run-like: `model.safetensors` + `model_config.json` (every method),
`config.yaml` and `tokenizer.json` copied from the source (so `scaletrain eval OUT` works),
method files (`model_int8.safetensors`, `model.onnx`, `model_int8.onnx`), training sub-runs
(`finetune/`, `distill/`, `scratch/`), and `report.md`, `compression.png`, `summary.json`.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from scaletrain.atomic import check_target, new_folder, write_bytes_atomic
from scaletrain.errors import UserError

from scaletrain.compress.names import METHODS  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


@dataclass
class Options:
    amount: float = 0.5             # prune / prune-structured: fraction of weights / units removed
    head_amount: float | None = None  # prune-structured on a GPT: fraction of heads (default: amount)
    energy: float = 0.9             # lowrank: retained fraction of Σ s² per layer
    finetune_steps: int = 0         # prune, prune-structured, lowrank: recovery steps after
    finetune_lr: float | None = None  # default: 0.3 x the run's optim.lr
    student: dict = field(default_factory=dict)  # distill: student args overriding the teacher's
    distill_steps: int | None = None  # default: the run's train.max_steps
    temperature: float = 2.0
    alpha: float = 0.5              # weight of the soft (KL) term
    baseline: bool = True           # distill: also train the student from scratch, same steps
    eval_batches: int = 16          # GPT validation batches (0: the whole split); MLP: all
    latency_rounds: int = 7
    threads: int = 1                # one fixed thread count for every latency measurement
    onnx: bool = True               # export the result to ONNX and check it under ONNX Runtime
    checkpoint: str | None = None   # read the weights from this DCP checkpoint / run folder
    device: str | None = None       # where fine-tuning and distillation train; None: the run's (finetune.training_device)
    backend: str = "auto"           # int8-dynamic: auto (fastest on this CPU), torchao or onnxruntime

    def check(self, method: str) -> None:
        if method not in METHODS:
            raise UserError(f"--method: unknown method {method!r}; known: {', '.join(METHODS)}")
        if not 0.0 <= self.amount < 1.0:
            raise UserError(f"--amount must be in [0, 1), got {self.amount}")
        if self.head_amount is not None and not 0.0 <= self.head_amount < 1.0:
            raise UserError(f"--head-amount must be in [0, 1), got {self.head_amount}")
        if not 0.0 < self.energy <= 1.0:
            raise UserError(f"--energy must be in (0, 1], got {self.energy}")
        for key in ("finetune_steps", "eval_batches"):
            if getattr(self, key) < 0:
                raise UserError(f"--{key.replace('_', '-')} must be >= 0, got {getattr(self, key)}")
        if self.latency_rounds < 1 or self.threads < 1:
            raise UserError("--latency-rounds and --threads must be >= 1")
        if self.distill_steps is not None and self.distill_steps < 1:
            raise UserError(f"--distill-steps must be >= 1, got {self.distill_steps}")
        if not 0.0 <= self.alpha <= 1.0 or self.temperature <= 0:
            raise UserError("--alpha must be in [0, 1] and --temperature > 0")
        if self.backend not in ("auto", "torchao", "onnxruntime"):
            raise UserError(f"--backend: expected auto, torchao or onnxruntime, got {self.backend!r}")
        if self.backend != "auto" and method != "int8-dynamic":
            raise UserError(f"--backend: only --method int8-dynamic chooses a runtime (this is {method})")
        if self.device not in (None, "cpu", "cuda"):
            raise UserError(f"--device: expected cpu or cuda, got {self.device!r}")
        if self.finetune_steps and method in ("int8-dynamic", "int8-weight", "onnx-int8"):
            raise UserError(f"--finetune-steps: not available for {method} (quantization-aware "
                            "fine-tuning is not built); use it with prune, prune-structured or lowrank")


def slower_than_original(method: str, original: dict, row: dict, backend: str | None) -> list[str]:
    """A warning line when the compressed model runs slower than the original at batch 64: a
    compression that costs speed must never pass unnoticed."""
    speed = row["speedup_b64"]
    if speed >= 1.0:
        return []
    hint = ""
    if method in ("int8-dynamic", "int8-weight") and backend != "onnxruntime":
        hint = ("; torchao's int8 kernels are slow on this CPU: try --method onnx-int8"
                + (" or --backend onnxruntime" if method == "int8-dynamic" else ""))
    return [f"warning: {row['model']} is slower than the original at batch 64: {speed:.2f}x "
            f"({row['latency_ms']['b64']:.1f} ms against {original['latency_ms']['b64']:.1f} ms){hint}"]


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _source_bytes(src) -> int:
    if src.weights.is_file():
        return src.weights.stat().st_size
    from safetensors.torch import save  # a checkpoint: the size its safetensors export would have

    seen, tensors = set(), {}
    for k, v in src.model.state_dict().items():
        if v.data_ptr() not in seen:  # a tied matrix is stored once, as save_model does
            seen.add(v.data_ptr())
            tensors[k] = v.contiguous()
    return len(save(tensors))


def _evaluate(task, model: nn.Module, cfg, batches: int) -> dict:
    # On the CPU for every model: the int8 runtimes (torchao, ONNX Runtime) run there, and the
    # rows stay comparable with each other and with the latency figures.
    batch_size = cfg.train.eval_batch_size or cfg.train.batch_size
    return task.evaluate(model, batches=batches, batch_size=batch_size, device=torch.device("cpu"),
                         autocast=nullcontext())


def _out_dir(run: Path, method: str, out) -> Path:
    out = Path(out) if out else run.parent / f"{run.name}-{method}"
    check_target(out, "--out", folder=True)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out: {out} already exists and is not empty; choose another folder")
    return out


def require_packages(method: str, onnx: bool) -> None:
    """The [compress] extra's packages this method needs: torchao for int8, onnx, onnxscript (the
    torch.onnx exporter's) and onnxruntime for the ONNX export check and onnx-int8."""
    from scaletrain.extras import require

    what = f"compress --method {method}"
    if method in ("int8-dynamic", "int8-weight"):
        require("torchao", "compress", what)
    if onnx or method == "onnx-int8":
        why = what if method == "onnx-int8" else f"{what}'s ONNX export check (or pass --no-onnx)"
        for module in ("onnx", "onnxscript", "onnxruntime"):
            require(module, "compress", why)


def _check_method_inputs(method: str, src, opts: Options) -> None:
    """What a method reads besides the run, checked before anything is written."""
    if opts.student and method != "distill":
        raise UserError(f"--student: only --method distill trains a student (this is {method})")
    if method == "distill" or opts.finetune_steps:
        from scaletrain.compress.finetune import training_device

        training_device(src.cfg, opts.device)  # --device cuda without one is refused here
    if method == "distill":
        from scaletrain.compress.distill import default_student, student_spec
        from scaletrain.models import model_from_config_json

        spec = student_spec(src.spec, opts.student or default_student(src.spec))
        try:
            with torch.device("meta"):  # the structure only: no memory for the weights
                model_from_config_json(spec)
        except UserError as exc:
            raise UserError(f"--student: {exc}") from None
        except (TypeError, ValueError, AssertionError, RuntimeError) as exc:  # a value the model cannot take
            raise UserError(f"--student: {spec['args']} does not make a {spec['name']} model: {exc}") from None


def compress(run: str | Path, method: str, out: str | Path | None = None, **options) -> dict:
    """Compress the run folder `run` with `method`; write and return the summary (see module doc).

    Everything is checked before `out` is made; a failure after that removes it again."""
    from scaletrain.compress.load import load_source
    from scaletrain.train.build import build_task

    try:
        opts = Options(**options)
    except TypeError as exc:
        raise UserError(f"compress: {exc}") from None
    opts.check(method)
    require_packages(method, opts.onnx)  # before anything is read: a missing extra is one line
    src = load_source(run, opts.checkpoint)
    out = _out_dir(src.run_dir, method, out)
    _check_method_inputs(method, src, opts)
    cfg = src.cfg.model_copy(deep=True)
    cfg.log.progress = False
    task = build_task(cfg, torch.device("cpu"), progress=False)[0]
    with new_folder(out):
        summary = _compress(method, src, task, cfg, opts, out)
    summary["out"] = str(out)
    return summary


def _compress(method: str, src, task, cfg, opts: Options, out: Path) -> dict:
    from scaletrain.compress import methods

    for name in ("config.yaml", "tokenizer.json"):  # the folder evaluates on its own
        if (src.run_dir / name).is_file():
            write_bytes_atomic(out / name, (src.run_dir / name).read_bytes())

    result = methods.apply(method, src, task, cfg, opts, out)
    runners = {"original": src.model, **{r.name: r.runtime for r in result.rows}}
    rows = [{"model": "original", "parameters": _params(src.model), "size_bytes": _source_bytes(src),
             "quality": _evaluate(task, src.model, cfg, opts.eval_batches)}]
    for r in result.rows:
        rows.append({"model": r.name, "parameters": r.parameters, "size_bytes": r.size_bytes,
                     "quality": _evaluate(task, r.runtime, cfg, opts.eval_batches), **r.extra})

    from scaletrain.compress.export import example_input
    from scaletrain.compress.latency import measure
    from scaletrain.compress.report import add_ratios, quality_key, versions, write_report

    latency = measure(runners, lambda b: example_input(src.model, b), rounds=opts.latency_rounds,
                      threads=opts.threads)
    for row in rows:
        row["latency_ms"] = latency[row["model"]]
    add_ratios(rows)
    qk = quality_key(rows[0]["quality"])
    main = rows[1]
    warnings = slower_than_original(method, rows[0], main, result.summary.get("int8_backend"))
    for text in warnings:
        log.warning("%s", text)
    shape = "[b, seq_len] token ids" if hasattr(src.model.args, "vocab_size") else "[b, features]"
    summary = {
        "method": method, "source": str(src.run_dir), "weights": str(src.weights),
        "options": {k: v for k, v in asdict(opts).items() if v not in (None, {}, [])},
        "quality_metric": qk,
        "quality_before": rows[0]["quality"][qk], "quality_after": main["quality"][qk],
        "size_ratio": main["size_ratio"], "speedup_b1": main["speedup_b1"], "speedup_b64": main["speedup_b64"],
        "rows": rows, **result.summary,
        "latency": {"threads": opts.threads, "rounds": opts.latency_rounds, "input": shape},
        "eval": (f"validation split, {opts.eval_batches or 'all'} batches" if qk == "val_ppl"
                 else "whole validation split"),
        "warnings": warnings, "notes": result.notes, "files": sorted(p.name for p in out.iterdir() if not p.name.startswith(".")),
        "versions": versions(),
    }
    summary["files"] = sorted(set(summary["files"]) | {"report.md", "compression.png", "summary.json"})
    write_report(out, summary)
    return summary
