"""int8-dynamic's runtime: from the CPU's flags and a measured, cached probe; and the warning a
compression that makes the model slower always gets."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")
from scaletrain import hardware  # noqa: E402
from scaletrain.compress import backend  # noqa: E402
from scaletrain.compress.run import slower_than_original  # noqa: E402


def _flags(monkeypatch, **on):
    feats = {"avx2": True, "avx512f": False, "avx512_bf16": False, "amx": False, "vnni": False, **on}
    monkeypatch.setattr(hardware, "cpu_features", lambda: feats)


def test_without_int8_dot_products_onnx_runtime_is_chosen_unmeasured(monkeypatch, tmp_path):
    _flags(monkeypatch)
    monkeypatch.setattr(backend, "measure", lambda: pytest.fail("measured on a CPU without VNNI/AMX"))
    name, why = backend.choose(cache_path=tmp_path / "c.json")
    assert name == "onnxruntime" and "no AVX512-VNNI or AMX" in why
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("speeds,expected", [({"torchao": 2.5, "onnxruntime": 1.8}, "torchao"),
                                             ({"torchao": 0.7, "onnxruntime": 3.9}, "onnxruntime")])
def test_with_vnni_the_measured_faster_one_is_chosen_and_cached(monkeypatch, tmp_path, speeds, expected):
    _flags(monkeypatch, vnni=True)
    calls = []
    monkeypatch.setattr(backend, "measure", lambda: calls.append(1) or dict(speeds))
    cache = tmp_path / "c.json"
    name, why = backend.choose(cache_path=cache)
    assert name == expected and "AVX512-VNNI" in why and f"torchao {speeds['torchao']:.2f}x" in why
    assert backend.choose(cache_path=cache)[0] == expected and calls == [1]  # the second call read the cache
    assert list(json.loads(cache.read_text()).values()) == [speeds]
    assert backend.choose("torchao", cache_path=cache) == ("torchao", "--backend torchao as set")


def test_the_probe_measures_both_runtimes():
    speeds = backend.measure()
    assert set(speeds) == {"torchao", "onnxruntime"} and all(v > 0 for v in speeds.values())


def _row(name, b64):
    return {"model": name, "latency_ms": {"b1": 1.0, "b64": b64}, "speedup_b64": None}


def test_a_slower_result_gets_a_warning_with_what_to_try():
    original = _row("original", 10.0)
    slow = {**_row("int8-dynamic", 20.0), "speedup_b64": 0.5}
    (text,) = slower_than_original("int8-dynamic", original, slow, "torchao")
    assert "slower than the original at batch 64: 0.50x (20.0 ms against 10.0 ms)" in text
    assert "--backend onnxruntime" in text
    fast = {**_row("onnx-int8", 4.0), "speedup_b64": 2.5}
    assert slower_than_original("onnx-int8", original, fast, None) == []
