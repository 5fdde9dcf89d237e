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
    assert set(info["cpu_flags"]) == {"avx2", "avx512_bf16", "amx", "vnni"}


def test_cpu_flags_read_from_cpuinfo(tmp_path, monkeypatch):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_tile amx_bf16\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(fake if path == "/proc/cpuinfo" else path, *a, **k))
    hardware.cpu_flags.cache_clear()
    try:
        assert hardware.cpu_flags() == {"avx2": True, "avx512_bf16": False, "amx": True, "vnni": True}
    finally:
        hardware.cpu_flags.cache_clear()


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
