"""ONNX export (torch.onnx, dynamo exporter), its check against PyTorch under ONNX Runtime, and
ONNX Runtime's dynamic int8 quantizer (int8 weights, activations quantized per call).

The exported graph takes a GPT's token ids `idx` [batch, seq] (both dynamic, seq up to the
model's context) or an MLP's features `x` [batch, ...] and returns the logits.
"""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from scaletrain.atomic import atomic_path
from scaletrain.extras import require


def example_input(model: nn.Module, batch: int, seed: int = 0) -> torch.Tensor:
    """A deterministic input of the model's shape: token ids for a GPT, features for an MLP."""
    gen = torch.Generator().manual_seed(seed)
    args = model.args
    if hasattr(args, "vocab_size"):
        return torch.randint(0, args.vocab_size, (batch, args.seq_len), generator=gen)
    return torch.randn(batch, args.input_dim, generator=gen)


def _input_name(model: nn.Module) -> str:
    return "idx" if hasattr(model.args, "vocab_size") else "x"


def export_onnx(model: nn.Module, path: Path) -> Path:
    """Write `path` (one self-contained file) atomically; batch (and a GPT's seq) are dynamic."""
    from torch.export import Dim

    model = model.eval()
    x = example_input(model, 2)
    name = _input_name(model)
    dims = {0: Dim("batch", min=1, max=4096)}
    if name == "idx":
        dims[1] = Dim("seq", min=2, max=model.args.seq_len)
    # The exporter prints progress lines and warnings about optional ops (torchvision): not ours.
    with atomic_path(path) as tmp, contextlib.redirect_stdout(io.StringIO()), _quiet("torch.onnx"), \
            torch.no_grad():
        torch.onnx.export(model, (x,), str(tmp), input_names=[name], output_names=["logits"],
                          dynamic_shapes={name: dims}, dynamo=True, external_data=False)
        _strip(tmp)
    return path


def _strip(path: Path) -> None:
    """Drop the exporter's per-node stack traces and module paths (local paths, ~10 % of a small file)."""
    import onnx

    from scaletrain.compress.onnx_tidy import strip_metadata

    model = onnx.load(str(path))
    strip_metadata(model)
    onnx.save(model, str(path))


@contextlib.contextmanager
def _quiet(logger: str):
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def quantize_onnx_int8(src: Path, dst: Path, per_channel: bool = True) -> Path:
    """ORT dynamic quantization: MatMul weights (and a GPT's embedding Gather) to int8, then the
    rewrites of `onnx_tidy` (a tied head in int8 over the embedding's table, rotary tables computed
    in the graph, no exporter metadata)."""
    quantization = require("onnxruntime.quantization", "compress", "compress --method onnx-int8")
    QuantType, quantize_dynamic = quantization.QuantType, quantization.quantize_dynamic

    from scaletrain.compress.onnx_tidy import tidy_int8

    with atomic_path(dst) as tmp, _quiet("root"):  # "consider pre-processing": shape inference is
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8,  # not needed for MatMul/Gather
                         per_channel=per_channel, op_types_to_quantize=["MatMul", "Gemm", "Gather"])
        tidy_int8(tmp)
    return dst


class OrtModel(nn.Module):
    """An ONNX Runtime session behind the nn.Module call interface, so the tasks' `evaluate`
    and the latency harness treat it like the PyTorch models (CPU, fixed thread count)."""

    def __init__(self, path: Path, threads: int = 1):
        super().__init__()
        ort = require("onnxruntime", "compress", "the ONNX check")

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor, doc_ids=None) -> torch.Tensor:
        if doc_ids is not None:
            raise ValueError("the ONNX graph has no document mask input")
        array = x.numpy() if x.dtype != torch.float32 else x.contiguous().numpy()
        if self.input_name == "idx":
            array = array.astype(np.int64)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


@torch.no_grad()
def max_abs_diff(reference: nn.Module, other: nn.Module, batch: int = 4, seed: int = 1) -> float:
    """Largest |logit difference| between two runnable models on the same deterministic input."""
    x = example_input(reference, batch, seed)
    return float((reference(x).float() - other(x).float()).abs().max())
