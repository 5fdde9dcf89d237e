"""The int8 ONNX rewrites (scaletrain.compress.onnx_tidy), each against what it replaces: the tied
head's int8 MatMul against ONNX Runtime's integer semantics written out in numpy, the rotary tables
computed in the graph against the stored ones, and the whole int8 GPT against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from scaletrain.compress.onnx_tidy import int8_tied_head, strip_metadata, tables_in_graph  # noqa: E402


def _run(model, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _tied_head_graph(extra_reader: bool):
    rng = np.random.default_rng(0)
    wq = rng.integers(0, 256, (7, 5), dtype=np.uint8)  # [vocab, d], the embedding's table
    inits = [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(np.array(0.013, np.float32), "s"),
             numpy_helper.from_array(np.array(121, np.uint8), "zp")]
    nodes = [helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["w"]),
             helper.make_node("Transpose", ["w"], ["wT"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "wT"], ["logits"], name="head")]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 3, 7])]
    if extra_reader:  # the fp32 table is read elsewhere too: it must stay
        nodes.append(helper.make_node("Identity", ["w"], ["w_out"]))
        outputs.append(helper.make_tensor_value_info("w_out", TensorProto.FLOAT, [7, 5]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), wq


def _dynamic_quantize(x: np.ndarray) -> tuple[np.ndarray, np.float32, np.uint8]:
    """ONNX DynamicQuantizeLinear, written out: uint8, the range always holding 0."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = np.float32((hi - lo) / 255)
    zp = np.uint8(np.clip(np.rint(-lo / scale), 0, 255))
    q = np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.uint8)
    return q, scale, zp


@pytest.mark.parametrize("extra_reader", [False, True])
def test_tied_head_becomes_an_integer_matmul_over_the_same_table(extra_reader):
    model, wq = _tied_head_graph(extra_reader)
    x = np.random.default_rng(1).standard_normal((2, 3, 5)).astype(np.float32)
    fp32_head = _run(model, {"x": x})[0]
    assert int8_tied_head(model)
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert "MatMul" not in ops and "MatMulInteger" in ops
    assert ("DequantizeLinear" in ops) == extra_reader  # the fp32 copy goes unless something reads it
    assert [i.name for i in model.graph.initializer].count("wq") == 1  # one stored table
    got = _run(model, {"x": x})[0]
    xq, xs, xzp = _dynamic_quantize(x)
    expected = ((xq.astype(np.int32) - int(xzp)) @ (wq.astype(np.int32) - 121).T).astype(np.float32) * (xs * np.float32(0.013))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert np.abs(got - fp32_head).max() < 0.05 * np.abs(fp32_head).max()  # int8 rounding of x only


def _table_graph(cos: np.ndarray, sin: np.ndarray):
    inits = [numpy_helper.from_array(cos, "rope_cos"), numpy_helper.from_array(sin, "rope_sin")]
    nodes = [helper.make_node("Identity", ["rope_cos"], ["c"]), helper.make_node("Identity", ["rope_sin"], ["s"])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(cos.shape)) for n in ("c", "s")]
    return helper.make_model(helper.make_graph(nodes, "g", [], outs, inits), opset_imports=[helper.make_opsetid("", 17)])


def test_rotary_tables_are_computed_in_the_graph_as_they_were_stored():
    from scaletrain.models.gpt.model import _rope_tables

    cos, sin = (t.numpy() for t in _rope_tables(256, 64))
    model = _table_graph(cos, sin)
    assert tables_in_graph(model) == ["rope_cos", "rope_sin"]
    assert not {"rope_cos", "rope_sin"} & {i.name for i in model.graph.initializer}
    c, s = _run(model, {})
    np.testing.assert_allclose(c, cos, atol=1e-6)
    np.testing.assert_allclose(s, sin, atol=1e-6)
    # Tables of another form stay stored.
    noise = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    assert tables_in_graph(_table_graph(noise, noise)) == []


def test_metadata_is_stripped():
    model, _ = _tied_head_graph(False)
    model.graph.node[0].metadata_props.add(key="pkg.torch.onnx.stack_trace", value="/home/someone/x.py")
    strip_metadata(model)
    assert not any(n.metadata_props for n in model.graph.node)


@pytest.mark.slow
def test_int8_gpt_is_smaller_and_stays_close_to_pytorch(tmp_path):
    from scaletrain.compress.export import OrtModel, export_onnx, quantize_onnx_int8
    from scaletrain.models import build_model

    torch.manual_seed(0)
    model = build_model("gpt", dict(vocab_size=512, seq_len=64, n_layer=2, n_head=2, d_model=64, rope=True)).eval()
    fp32 = export_onnx(model, tmp_path / "g.onnx")
    q = quantize_onnx_int8(fp32, tmp_path / "q.onnx")
    graph = onnx.load(str(q)).graph
    assert not {"rope_cos", "rope_sin"} & {i.name for i in graph.initializer}
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules()) - 1  # the tied head is the table
    assert [n.op_type for n in graph.node].count("MatMulInteger") == linears + 1  # every linear, and the head
    x = torch.randint(0, 512, (3, 64))
    with torch.no_grad():
        ref, got = model(x), OrtModel(q)(x)
    assert float((got - ref).norm() / ref.norm()) < 0.05
    fp32_bytes = 4 * model.num_params()
    assert q.stat().st_size < 0.30 * fp32_bytes
