"""Rewrites of an ONNX graph after ONNX Runtime's dynamic int8 quantizer, each checked to compute
the same thing, so that the int8 GPT is as small and fast as int8 allows:

- `strip_metadata`: the exporter records, for every node, the Python stack trace and module path
  it came from (a tenth of a small model's file, and local paths in a shipped file);
- `tables_in_graph`: rotary position tables (cos and sin of position x frequency, fp32, stored as
  initializers) are computed in the graph from their frequencies instead; ONNX Runtime folds them
  back into constants when the session starts, so they cost nothing per call;
- `int8_tied_head`: a GPT whose output head is tied to its token embedding leaves the quantizer with
  the embedding's int8 table (for its Gather) and the head as an fp32 MatMul over that table,
  dequantized and transposed on every call: the largest matmul of a small-vocabulary model in
  fp32. The head becomes an int8 MatMulInteger over the same stored table (activations quantized
  per call, as the quantizer does for every other MatMul): one int8 copy of the matrix in the file,
  int8 arithmetic for both of its uses.
"""

from __future__ import annotations

import numpy as np

_TOLERANCE = 1e-5  # a recomputed table must match the stored one this closely (fp32 cos/sin)


def strip_metadata(model) -> None:
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.graph.value_info[:]
    model.graph.doc_string = ""


def _initializers(graph) -> dict:
    return {t.name: t for t in graph.initializer}


def _consumers(graph, name: str) -> list:
    return [n for n in graph.node if name in n.input]


def tables_in_graph(model, names: tuple[str, ...] = ("rope_cos", "rope_sin")) -> list[str]:
    """Replace a pair of rotary tables cos/sin[T, F] = cos/sin(t x f_j) by nodes computing them from
    the F frequencies: the slope of each column's unwrapped phase atan2(sin, cos) over t, rounded
    to float32 (what the model multiplied with). Returns the names replaced (none when the tables
    are absent or the recomputed ones differ from them)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = _initializers(graph)
    if not all(n in inits for n in names):
        return []
    cos, sin = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in names)
    if cos.ndim != 2 or cos.shape != sin.shape or cos.shape[0] < 2:
        return []
    t = np.arange(cos.shape[0], dtype=np.float64)
    phase = np.unwrap(np.arctan2(sin, cos), axis=0)  # t x f_j, as long as f_j < pi
    freq = ((t[:, None] * phase).sum(0) / (t * t).sum()).astype(np.float32)
    angles = np.arange(cos.shape[0], dtype=np.float32)[:, None] * freq[None, :]
    if max(np.abs(np.cos(angles) - cos).max(), np.abs(np.sin(angles) - sin).max()) > _TOLERANCE:
        return []
    prefix = names[0] + "_in_graph"
    graph.initializer.remove(inits[names[0]])
    graph.initializer.remove(inits[names[1]])
    graph.initializer.extend([
        numpy_helper.from_array(freq[None, :], f"{prefix}_freq"),
        numpy_helper.from_array(np.array(0.0, np.float32), f"{prefix}_start"),
        numpy_helper.from_array(np.array(float(cos.shape[0]), np.float32), f"{prefix}_limit"),
        numpy_helper.from_array(np.array(1.0, np.float32), f"{prefix}_delta"),
        numpy_helper.from_array(np.array([1], np.int64), f"{prefix}_axis"),
    ])
    nodes = [
        helper.make_node("Range", [f"{prefix}_start", f"{prefix}_limit", f"{prefix}_delta"], [f"{prefix}_pos"]),
        helper.make_node("Unsqueeze", [f"{prefix}_pos", f"{prefix}_axis"], [f"{prefix}_col"]),
        helper.make_node("Mul", [f"{prefix}_col", f"{prefix}_freq"], [f"{prefix}_angles"]),
        helper.make_node("Cos", [f"{prefix}_angles"], [names[0]]),
        helper.make_node("Sin", [f"{prefix}_angles"], [names[1]]),
    ]
    for i, node in enumerate(nodes):  # inputs of the graph come first in topological order
        graph.node.insert(i, node)
    del TensorProto
    return list(names)


def int8_tied_head(model) -> bool:
    """Turn `MatMul(x, Transpose(DequantizeLinear(Wq, s, zp)))` (a tied head over the embedding's
    int8 table) into `MatMulInteger(DynamicQuantizeLinear(x), Transpose(Wq))` scaled back to float.
    Returns whether it found such a head."""
    from onnx import TensorProto, helper

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = _initializers(graph)
    for mm in list(graph.node):
        if mm.op_type != "MatMul":
            continue
        tr = producer.get(mm.input[1])
        if tr is None or tr.op_type != "Transpose":
            continue
        dq = producer.get(tr.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        wq, scale, zero = dq.input[0], dq.input[1], dq.input[2] if len(dq.input) > 2 else ""
        if inits[scale].dims not in ([], [1]):  # per-tensor only: MatMulInteger's scale is applied after
            continue
        x, out, p = mm.input[0], mm.output[0], mm.name or "tied_head"
        nodes = [
            helper.make_node("DynamicQuantizeLinear", [x], [f"{p}_xq", f"{p}_xs", f"{p}_xzp"]),
            helper.make_node("Transpose", [wq], [f"{p}_wqT"], perm=[1, 0]),
            helper.make_node("MatMulInteger", [f"{p}_xq", f"{p}_wqT", f"{p}_xzp", zero], [f"{p}_acc"]),
            helper.make_node("Cast", [f"{p}_acc"], [f"{p}_accf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{p}_xs", scale], [f"{p}_scale"]),
            helper.make_node("Mul", [f"{p}_accf", f"{p}_scale"], [out]),
        ]
        at = list(graph.node).index(mm)
        graph.node.remove(mm)
        for i, node in enumerate(nodes):
            graph.node.insert(at + i, node)
        for dead in (tr, dq):  # the fp32 copy of the table, if nothing else reads it
            if not any(o for o in dead.output for _ in _consumers(graph, o)):
                graph.node.remove(dead)
        return True
    return False


def tidy_int8(path) -> dict:
    """Apply every rewrite to the quantized model at `path` in place; what was done."""
    import onnx

    model = onnx.load(str(path))
    strip_metadata(model)
    done = {"rotary_tables_in_graph": tables_in_graph(model), "int8_tied_head": int8_tied_head(model)}
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return done
