"""What machine are we on, how fast can it multiply matrices, and how much memory did we use.

MFU is reported against the *measured* matmul peak of this machine rather than a datasheet
number: CPUs have no reliable datasheet peak, and a measured peak makes MFU comparable across
runs on the same box. The measurement is cached per machine/threads/torch/dtype.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from scaletrain.atomic import write_json_atomic

__all__ = ["machine_info", "cpu_features", "matmul_peak_flops", "choose_precision", "peak_memory_bytes", "mfu"]

# CPUs saturate around n=1-2k; GPUs need bigger tiles to reach their tensor-core peak.
_DEFAULT_SIZES = {"cpu": (1024, 2048), "cuda": (4096, 8192)}
_MAX_REPEATS = 5
_BUDGET_S = 1.0  # per size, so a slow dtype path (e.g. bf16 without hardware support) stays bounded


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    # ARM Linux has no "model name" and platform.processor() is often empty there.
    return platform.processor() or platform.machine() or "unknown-cpu"


# The instruction-set features that decide precision and int8 kernels, as /proc/cpuinfo names them.
_FEATURES = {
    "avx2": ("avx2",),
    "avx512f": ("avx512f",),
    "avx512_bf16": ("avx512_bf16",),  # bf16 dot products (Cooper Lake, Zen 4 and later)
    "amx": ("amx_bf16", "amx_tile"),  # Advanced Matrix Extensions (Sapphire Rapids and later)
    "vnni": ("avx512_vnni", "avx_vnni"),  # int8 dot products
}


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):  # x86, ARM
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_features() -> dict[str, bool]:
    """Which of AVX2, AVX512F, AVX512-BF16, AMX and VNNI this CPU reports (all False where the
    flags cannot be read, e.g. off Linux)."""
    flags = _cpu_flags()
    return {name: any(f in flags for f in names) for name, names in _FEATURES.items()}


def _cuda_name(device: str | torch.device = "cuda") -> str | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.device(device))


def machine_info() -> dict:
    return {
        "cpu_model": _cpu_model(),
        "cpu_flags": cpu_features(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "cuda_device": _cuda_name(),
        "cpu_features": cpu_features(),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _time_mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, inner: int) -> float:
    dev = a.device
    t0 = time.perf_counter()
    for _ in range(inner):
        torch.mm(a, b, out=out)
    _sync(dev)
    return time.perf_counter() - t0


def _operands(n: int, dtype: torch.dtype, dev: torch.device) -> tuple[torch.Tensor, ...]:
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)
    return a, b, torch.empty(n, n, device=dev, dtype=dtype)


def _measure_peak(dtype: torch.dtype, device: str, sizes: tuple[int, ...]) -> float:
    """Best achieved matmul FLOP/s over `sizes` (2*n^3 FLOPs per n x n matmul).

    Bounded in time: a dtype without a fast kernel (bf16 on an AVX2-only CPU runs ~1 GFLOP/s,
    where one 2048^3 matmul takes ~18 s) must not stall startup, so a small probe estimates the
    rate first and sizes that would not fit the per-size budget are shrunk or skipped.
    """
    dev = torch.device(device)
    n0 = min(256, *sizes)
    probe = _operands(n0, dtype, dev)
    _time_mm(*probe, inner=1)  # thread pool / kernel selection warm-up
    # Best of 3: a single tiny timing is easily inflated by a scheduler hiccup, which would
    # make us shrink the real sizes for nothing.
    rate = max(2.0 * n0**3 / max(_time_mm(*probe, inner=1), 1e-9) for _ in range(3))
    del probe
    best = 0.0
    for n in sorted(sizes):
        # Only act on clearly slow paths (one matmul alone over the budget): small sizes
        # under-run fast kernels, so a tighter test would shrink healthy fp32 measurements.
        if 2.0 * n**3 / max(best, rate) > _BUDGET_S:
            if best > 0:
                break  # larger sizes will not fit either; the smaller one already measured
            # Size so warm-up + 2 timed matmuls fit the budget.
            n = max(64, int((_BUDGET_S / 3 * rate / 2) ** (1 / 3)) // 64 * 64)
        a, b, out = _operands(n, dtype, dev)
        first = _time_mm(a, b, out, inner=1)  # warm-up for this shape, also a first timing
        # Batch several matmuls per timing when one is too short for the clock/launch overhead.
        inner = max(1, min(100, math.ceil(0.01 / max(first, 1e-9))))
        deadline = time.perf_counter() + _BUDGET_S
        for rep in range(_MAX_REPEATS):
            best = max(best, 2.0 * n**3 * inner / _time_mm(a, b, out, inner))
            if rep >= 1 and time.perf_counter() > deadline:
                break
        del a, b, out
    return best


def _default_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "scaletrain" / "matmul_peak.json"


# Variables that limit the instruction sets the CPU kernels use (oneDNN, MKL); with torch's own
# dispatch level they are part of what a measured peak is a peak of.
ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def _cache_key(dtype: torch.dtype, dev: torch.device, sizes: tuple[int, ...]) -> str:
    hw = _cuda_name(dev) if dev.type == "cuda" else _cpu_model()
    if dev.type == "cpu":  # ATEN_CPU_CAPABILITY=avx2 or ONEDNN_MAX_CPU_ISA=AVX2 make bf16 ~100x slower
        limits = ",".join(f"{k}={os.environ[k]}" for k in ISA_LIMITS if os.environ.get(k))
        hw += f"|isa={torch.backends.cpu.get_cpu_capability()}" + (f",{limits}" if limits else "")
    return (f"{dev.type}:{hw}|threads={torch.get_num_threads()}|torch={torch.__version__}"
            f"|{str(dtype).removeprefix('torch.')}|n={','.join(map(str, sizes))}")


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}  # missing or corrupt: measure again and rewrite it
    return data if isinstance(data, dict) else {}


def matmul_peak_flops(
    dtype: torch.dtype,
    device: str = "cpu",
    *,
    cache_path: Path | None = None,
    refresh: bool = False,
    sizes: tuple[int, ...] | None = None,
) -> float:
    """Measured matmul peak (FLOP/s) of this machine for `dtype`, cached on disk.

    Call it from one process per machine (rank 0): concurrent measurements share the cores and
    would under-report the peak. `refresh=True` measures again and keeps the larger figure.
    """
    dev = torch.device(device)
    sizes = tuple(sizes or _DEFAULT_SIZES.get(dev.type, _DEFAULT_SIZES["cpu"]))
    path = Path(cache_path) if cache_path is not None else _default_cache_path()
    key = _cache_key(dtype, dev, sizes)
    cache = _read_cache(path)
    cached = cache.get(key)
    if not refresh and isinstance(cached, (int, float)) and cached > 0 and math.isfinite(cached):
        return float(cached)
    peak = _measure_peak(dtype, device, sizes)
    if isinstance(cached, (int, float)) and math.isfinite(cached):
        # A peak is a maximum: a measurement taken while other jobs shared the cores reads low, so
        # a re-measurement only ever raises the cached figure.
        peak = max(peak, float(cached))
    cache[key] = peak
    try:
        write_json_atomic(path, cache)
    except OSError as e:  # read-only home etc.: the number is still valid for this run
        logging.getLogger(__name__).warning("warning: could not write matmul peak cache %s: %s", path, e)
    return peak


# bf16 is chosen on a CPU only when its measured matmul peak beats fp32's by this factor: native
# bf16 runs about 1.5-2x fp32 (AVX512-BF16) or far more (AMX), an emulated one 30-50x slower.
BF16_MIN_SPEEDUP = 1.2


def choose_precision(requested: str, device: str | torch.device = "cpu", *,
                     cache_path: Path | None = None) -> tuple[str, str]:
    """(precision, why) for `train.precision=requested`: "auto" becomes bf16 where the device
    multiplies bf16 natively and faster than fp32, fp32 elsewhere; any other value stays as set.

    A CUDA device: bf16 when it has native bf16 (Ampere and later). A CPU: bf16 only when it reports
    AVX512-BF16 or AMX *and* the measured bf16 matmul peak (cached per machine, see
    `matmul_peak_flops`) is at least BF16_MIN_SPEEDUP x the fp32 one, so a flag the library does
    not use, or a hypervisor that hides the units, cannot make training slower. CPUs without either
    flag are not measured at all (fp32 at once: their bf16 path is emulated).
    """
    if requested != "auto":
        return requested, f"train.precision={requested} as set"
    dev = torch.device(device)
    if dev.type == "cuda":
        name = _cuda_name(dev) or "this GPU"
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", f"auto: {name} has native bf16"
        return "fp32", f"auto: {name} has no native bf16"
    if dev.type != "cpu":
        return "fp32", f"auto: fp32 on {dev.type}"
    feats = cpu_features()
    units = [name for name, key in (("AMX", "amx"), ("AVX512-BF16", "avx512_bf16")) if feats[key]]
    if not units:
        return "fp32", "auto: this CPU has no native bf16 (no AVX512-BF16, no AMX): bf16 would be emulated, far slower"
    bf16 = matmul_peak_flops(torch.bfloat16, "cpu", cache_path=cache_path)
    fp32 = matmul_peak_flops(torch.float32, "cpu", cache_path=cache_path)
    ratio = bf16 / fp32 if fp32 > 0 else 0.0
    measured = f"bf16 matmuls measured at {ratio:.2g}x fp32 ({bf16 / 1e9:.0f} vs {fp32 / 1e9:.0f} GFLOP/s)"
    if ratio >= BF16_MIN_SPEEDUP:
        return "bf16", f"auto: this CPU has {' and '.join(units)}; {measured}"
    return "fp32", (f"auto: this CPU reports {' and '.join(units)} but {measured}, below the "
                    f"{BF16_MIN_SPEEDUP}x that bf16 must gain")


def bf16_is_native(device: str | torch.device = "cpu") -> bool:
    """Whether this device multiplies bf16 natively (flags or CUDA capability; no measurement)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    feats = cpu_features()
    return dev.type == "cpu" and (feats["avx512_bf16"] or feats["amx"])


def peak_memory_bytes(device: str) -> int:
    """Peak memory of this process: CUDA allocator peak, or peak RSS on CPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.max_memory_allocated(dev))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(rss if sys.platform == "darwin" else rss * 1024)


def mfu(flops_per_unit: float, units_per_second: float, peak: float) -> float:
    """Model FLOPs utilisation as a fraction of `peak` (e.g. 0.42 for 42%)."""
    if peak <= 0:
        raise ValueError(f"peak FLOP/s must be positive, got {peak}")
    return flops_per_unit * units_per_second / peak
