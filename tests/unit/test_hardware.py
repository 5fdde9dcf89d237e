"""Machine info, measured matmul peak (with its cache), peak memory and MFU."""

import json

import pytest
import torch

from scaletrain import hardware
from scaletrain.hardware import machine_info, matmul_peak_flops, mfu, peak_memory_bytes


def test_machine_info():
    info = machine_info()
    assert info["cpu_model"]
    assert info["logical_cores"] >= 1
    assert info["torch_threads"] == torch.get_num_threads()
    assert info["torch_version"] == torch.__version__
    assert {"python_version", "platform", "cuda_device"} <= info.keys()
    assert set(info["cpu_flags"]) == {"avx2", "avx512f", "avx512_bf16", "amx", "vnni"}


def test_cpu_flags_read_from_cpuinfo(tmp_path, monkeypatch):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_tile amx_bf16\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(fake if path == "/proc/cpuinfo" else path, *a, **k))
    hardware._cpu_flags.cache_clear()
    try:
        assert hardware.cpu_features() == {"avx2": True, "avx512f": True, "avx512_bf16": False, "amx": True, "vnni": True}
    finally:
        hardware._cpu_flags.cache_clear()


def test_matmul_peak_measures_then_caches(tmp_path, monkeypatch):
    cache = tmp_path / "peak.json"
    peak = matmul_peak_flops(torch.float32, cache_path=cache, sizes=(256,))
    assert peak > 1e6
    data = json.loads(cache.read_text())
    assert list(data.values()) == [peak]
    assert "float32" in next(iter(data))

    def boom(*a, **k):
        raise AssertionError("re-measured despite cache")

    monkeypatch.setattr(hardware, "_measure_peak", boom)
    assert matmul_peak_flops(torch.float32, cache_path=cache, sizes=(256,)) == peak
    with pytest.raises(AssertionError):  # refresh forces a measurement
        matmul_peak_flops(torch.float32, cache_path=cache, sizes=(256,), refresh=True)


def test_a_limited_instruction_set_is_measured_apart(tmp_path, monkeypatch):
    # ONEDNN_MAX_CPU_ISA=AVX2 (or ATEN_CPU_CAPABILITY=avx2) on a CPU with AVX512-BF16 makes bf16
    # matmuls emulated: the full-ISA peak cached before must not decide bf16 for such a run.
    cache = tmp_path / "peak.json"
    measured = iter([400e9, 1e9])
    monkeypatch.setattr(hardware, "_measure_peak", lambda dtype, device, sizes: next(measured))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert matmul_peak_flops(torch.bfloat16, cache_path=cache, sizes=(64,)) == 400e9
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert matmul_peak_flops(torch.bfloat16, cache_path=cache, sizes=(64,)) == 1e9  # measured, not the cached one
    keys = list(json.loads(cache.read_text()))
    assert len(keys) == 2 and any("ONEDNN_MAX_CPU_ISA=AVX2" in k for k in keys)
    assert all(f"isa={torch.backends.cpu.get_cpu_capability()}" in k for k in keys)


def test_corrupt_cache_is_rewritten(tmp_path, monkeypatch):
    cache = tmp_path / "peak.json"
    cache.write_text("{not json")
    monkeypatch.setattr(hardware, "_measure_peak", lambda dtype, device, sizes: 123.0)
    assert matmul_peak_flops(torch.bfloat16, cache_path=cache, sizes=(64,)) == 123.0
    assert list(json.loads(cache.read_text()).values()) == [123.0]
    assert [p.name for p in tmp_path.iterdir()] == ["peak.json"]  # no temp files left


def test_real_measurement_small():
    # Exercises the real timing loop for a second dtype without touching any cache.
    assert hardware._measure_peak(torch.bfloat16, "cpu", (128,)) > 0


def test_mfu_and_memory():
    assert mfu(6e9, 1000.0, 1e13) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        mfu(1.0, 1.0, 0.0)
    assert peak_memory_bytes("cpu") > 1 << 20


def test_refresh_keeps_the_larger_peak(tmp_path, monkeypatch):
    """A peak measured on a busy machine reads low: re-measuring only ever raises it."""
    from scaletrain import hardware

    cache = tmp_path / "peak.json"
    monkeypatch.setattr(hardware, "_measure_peak", lambda *a, **k: 5.0e10)
    assert hardware.matmul_peak_flops(torch.float32, cache_path=cache, sizes=(256,)) == 5.0e10
    monkeypatch.setattr(hardware, "_measure_peak", lambda *a, **k: 1.5e11)
    assert hardware.matmul_peak_flops(torch.float32, cache_path=cache, sizes=(256,), refresh=True) == 1.5e11
    monkeypatch.setattr(hardware, "_measure_peak", lambda *a, **k: 9.0e10)
    assert hardware.matmul_peak_flops(torch.float32, cache_path=cache, sizes=(256,), refresh=True) == 1.5e11
    assert hardware.matmul_peak_flops(torch.float32, cache_path=cache, sizes=(256,)) == 1.5e11


def _flags(monkeypatch, **on):
    feats = {"avx2": True, "avx512f": False, "avx512_bf16": False, "amx": False, "vnni": False, **on}
    monkeypatch.setattr(hardware, "cpu_features", lambda: feats)


def _peaks(monkeypatch, bf16: float, fp32: float, calls: list):
    def peak(dtype, device="cpu", **kw):
        calls.append(dtype)
        return bf16 if dtype == torch.bfloat16 else fp32

    monkeypatch.setattr(hardware, "matmul_peak_flops", peak)


def test_auto_precision_without_native_bf16_is_fp32_unmeasured(monkeypatch):
    calls = []
    _flags(monkeypatch)
    _peaks(monkeypatch, 9e11, 1e11, calls)  # even a (bogus) fast bf16 figure is not consulted
    precision, why = hardware.choose_precision("auto", "cpu")
    assert precision == "fp32" and "no AVX512-BF16, no AMX" in why and calls == []


@pytest.mark.parametrize("bf16,fp32,expected", [(2.0e11, 1.0e11, "bf16"), (1.1e11, 1.0e11, "fp32"),
                                                (3.0e9, 1.0e11, "fp32")])
def test_auto_precision_with_the_flag_follows_the_measurement(monkeypatch, bf16, fp32, expected):
    calls = []
    _flags(monkeypatch, avx512_bf16=True)
    _peaks(monkeypatch, bf16, fp32, calls)
    precision, why = hardware.choose_precision("auto", "cpu")
    assert precision == expected and "AVX512-BF16" in why and f"{bf16 / fp32:.2g}x" in why
    assert set(calls) == {torch.bfloat16, torch.float32}


def test_amx_counts_as_native_and_a_set_precision_stays(monkeypatch):
    _flags(monkeypatch, amx=True)
    _peaks(monkeypatch, 8e11, 1e11, [])
    assert hardware.choose_precision("auto", "cpu")[0] == "bf16" and hardware.bf16_is_native("cpu")
    assert hardware.choose_precision("fp32", "cpu") == ("fp32", "train.precision=fp32 as set")
    assert hardware.choose_precision("bf16", "cpu")[0] == "bf16"


def test_cpu_features_reads_the_flags(monkeypatch):
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: frozenset({"avx2", "avx512_vnni", "amx_tile"}))
    assert hardware.cpu_features() == {"avx2": True, "avx512f": False, "avx512_bf16": False, "amx": True,
                                       "vnni": True}
