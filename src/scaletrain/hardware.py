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

__all__ = ["machine_info", "cpu_flags", "matmul_peak_flops", "peak_memory_bytes", "mfu"]

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


@functools.lru_cache(maxsize=1)
def cpu_flags() -> dict[str, bool]:
    """The CPU features that decide how fast this machine encodes text and multiplies low-precision
    matrices: AVX2, AVX512-BF16, AMX (tile units) and VNNI (int8 dot products, AVX512 or AVX)."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"avx2": "avx2" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "amx": any(f.startswith("amx") for f in flags),
            "vnni": "avx512_vnni" in flags or "avx_vnni" in flags}


def _cuda_name(device: str | torch.device = "cuda") -> str | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.device(device))


def machine_info() -> dict:
    return {
        "cpu_model": _cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "cuda_device": _cuda_name(),
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


def _cache_key(dtype: torch.dtype, dev: torch.device, sizes: tuple[int, ...]) -> str:
    hw = _cuda_name(dev) if dev.type == "cuda" else _cpu_model()
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
