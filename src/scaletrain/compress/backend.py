"""Which int8 runtime `--method int8-dynamic` uses on the CPU at hand: torchao or ONNX Runtime.

torchao's dynamic int8 matmuls are fast only where the CPU has int8 dot-product instructions
(AVX512-VNNI or AMX); elsewhere they run far slower than fp32 (measured 20x slower on a main-job
GPT at batch 64 on an AVX2-only CPU), while ONNX Runtime's int8 kernels are fast on AVX2 too. So:

- without VNNI or AMX: ONNX Runtime, at once (nothing measured);
- with them: both measured once on a probe (two Linear 256 <-> 1024 layers on 1,024 rows, one
  thread, int8 against fp32 eager), cached per machine, torch, torchao and onnxruntime version
  beside the matmul peak cache; the faster one is used. Even VNNI does not make torchao fast
  everywhere (measured 0.76x fp32 on a VNNI CPU at batch 64), hence the measurement.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from scaletrain import hardware
from scaletrain.atomic import write_json_atomic

log = logging.getLogger(__name__)
BACKENDS = ("torchao", "onnxruntime")
_ROWS, _WIDTH, _HIDDEN = 1024, 256, 1024


def _cache_path() -> Path:
    return hardware._default_cache_path().with_name("int8_backend.json")


def _key() -> str:
    import onnxruntime
    import torchao

    return (f"{hardware.machine_info()['cpu_model']}|threads=1|torch={torch.__version__}"
            f"|torchao={torchao.__version__}|onnxruntime={onnxruntime.__version__}")


def _median_seconds(fn, repeats: int = 7) -> float:
    fn()  # warm-up: kernel selection, allocation
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def _probe_ort(w1: np.ndarray, w2: np.ndarray, x: np.ndarray) -> float:
    """Seconds of ONNX Runtime's dynamic int8 on the probe: a graph built by hand (no exporter)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.shape[0], w2.shape[1]])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    from scaletrain.compress.export import _quiet

    with tempfile.TemporaryDirectory() as tmp, _quiet("root"):
        src, dst = Path(tmp) / "probe.onnx", Path(tmp) / "probe_int8.onnx"
        src.write_bytes(model.SerializeToString())
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(dst), opts, providers=["CPUExecutionProvider"])
        return _median_seconds(lambda: session.run(None, {"x": x}))


def measure() -> dict:
    """Speed of each int8 backend over fp32 eager on the probe (one thread): {"torchao": x, ...}."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(0)
        model = nn.Sequential(nn.Linear(_WIDTH, _HIDDEN, bias=False), nn.ReLU(),
                              nn.Linear(_HIDDEN, _WIDTH, bias=False)).eval()
        with torch.no_grad():
            for layer in (model[0], model[2]):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.05)
        x = torch.randn(_ROWS, _WIDTH, generator=gen)
        with torch.inference_mode():
            fp32 = _median_seconds(lambda: model(x))
            q = copy.deepcopy(model)
            quantize_(q, Int8DynamicActivationInt8WeightConfig())
            torchao_s = _median_seconds(lambda: q(x))
        ort_s = _probe_ort(model[0].weight.detach().T.contiguous().numpy(),
                           model[2].weight.detach().T.contiguous().numpy(), x.numpy())
    finally:
        torch.set_num_threads(before)
    return {"torchao": fp32 / torchao_s, "onnxruntime": fp32 / ort_s}


def choose(requested: str = "auto", *, cache_path: Path | None = None) -> tuple[str, str]:
    """(backend, why) for --backend `requested` ("auto", "torchao" or "onnxruntime")."""
    if requested != "auto":
        return requested, f"--backend {requested} as set"
    feats = hardware.cpu_features()
    units = [name for name, key in (("AMX", "amx"), ("AVX512-VNNI", "vnni")) if feats[key]]
    if not units:
        return "onnxruntime", ("auto: this CPU has no AVX512-VNNI or AMX, where torchao's int8 matmuls run "
                               "slower than fp32; ONNX Runtime's int8 kernels are fast on it")
    path = Path(cache_path) if cache_path is not None else _cache_path()
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        cache = {}
    cache = cache if isinstance(cache, dict) else {}
    key = _key()
    speed = cache.get(key)
    if not (isinstance(speed, dict) and all(isinstance(speed.get(b), (int, float)) and math.isfinite(speed[b])
                                            for b in BACKENDS)):
        speed = measure()
        cache[key] = speed
        try:
            write_json_atomic(path, cache)
        except OSError as exc:  # a read-only home: the figures still hold for this run
            log.warning("warning: could not write the int8 backend cache %s: %s", path, exc)
    best = max(BACKENDS, key=lambda b: speed[b])
    measured = ", ".join(f"{b} {speed[b]:.2f}x" for b in BACKENDS)
    return best, f"auto: this CPU has {' and '.join(units)}; int8 over fp32 on a probe: {measured}"
