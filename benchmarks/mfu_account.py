"""The pieces of benchmarks/mfu.py that read a profile and time matmul shapes.

- `step_account(trace_events, steps)`: one training step, from the Chrome trace `scaletrain profile`
  writes, split by what each op does (matmul, attention, loss, norms, ...). Self time only, so that
  nothing counts twice: a `aten::linear` that calls `aten::mm` contributes its own dispatch time to
  "dispatch" and the mm's time to "matmul".
- `model_gemms(args, batch)`: every matmul a GPT training step runs (forward, and the two backward
  products of each linear layer), with the operand layouts autograd uses.
- `time_call(fn)` / `time_mm(a, b)`: best seconds per call, batched so that one timing is long enough;
  matmuls into a preallocated output, as the peak is measured.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict

import torch
import torch.nn.functional as F

PHASES = ("data", "forward", "backward", "optimizer")

# Category of an op by name, for ops in the forward and backward phases. Everything in the data and
# optimizer phases is counted under that phase instead (clipping, AdamW and zero_grad are "optimizer"
# whatever their ops are called).
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
LOSS_OPS = {"aten::_log_softmax", "aten::_log_softmax_backward_data", "aten::nll_loss_forward",
            "aten::nll_loss_backward", "aten::nll_loss2d_forward", "aten::nll_loss2d_backward"}
# Ops that only describe, allocate or route tensors (views, wrappers that call the real kernel, the
# autograd engine's per-node entries): their self time is framework cost, not arithmetic.
DISPATCH_OPS = {"aten::linear", "aten::matmul", "aten::t", "aten::view", "aten::transpose", "aten::reshape",
                "aten::as_strided", "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::expand",
                "aten::slice", "aten::select", "aten::unbind", "aten::chunk", "aten::split", "aten::narrow",
                "aten::unsqueeze", "aten::squeeze", "aten::detach", "aten::detach_", "aten::_unsafe_view",
                "aten::alias", "aten::resolve_conj", "aten::resolve_neg", "aten::contiguous", "aten::flatten",
                "aten::lift_fresh", "aten::to", "aten::_to_copy", "aten::scaled_dot_product_attention",
                "aten::layer_norm", "aten::cross_entropy_loss", "aten::log_softmax", "aten::nll_loss",
                "aten::nll_loss_nd", "aten::embedding", "aten::dropout", "aten::result_type",
                "aten::set_", "aten::_reshape_alias", "aten::permute", "aten::numpy_T", "aten::ones_like",
                "aten::zeros_like", "aten::zeros"}
# ReLU² is relu then square (a pow, and a threshold in backward); the preset's MLP is its only user.
ACTIVATION_OPS = ("aten::relu", "aten::relu_", "aten::threshold_backward", "aten::square", "aten::pow")
CATEGORIES = ("matmul", "attention", "loss", "layer norm", "activation", "embedding", "elementwise", "other ops",
              "dispatch", "python", "data", "optimizer")
ABOUT = {
    "matmul": "aten::mm: every nn.Linear, forward and both backward products",
    "attention": "SDPA (flash attention for CPU), forward and backward",
    "loss": "log-softmax and NLL over the 2,048-token vocabulary, forward and backward",
    "layer norm": "LayerNorm forward and backward",
    "activation": "the MLP's activation (GELU or ReLU²) forward and backward",
    "embedding": "token embedding lookup and its dense gradient",
    "elementwise": "mul/add/sub/neg/cat/copy/fill: rotary positions, residual adds, gradient sums",
    "other ops": "any op not named above",
    "dispatch": "self time of wrappers, views and autograd nodes (aten::linear, transpose, ...Backward0)",
    "python": "time inside the step not inside any op: Python, the autograd engine, the loop",
    "data": "building the batch (the `data` range)",
    "optimizer": "gradient clipping, fused AdamW, zero_grad (the `optimizer` range)",
}


def categorize(name: str, phase: str | None) -> str:
    if phase in ("data", "optimizer"):
        return phase
    if name in MATMUL_OPS:
        return "matmul"
    if "scaled_dot_product" in name and name != "aten::scaled_dot_product_attention":
        return "attention"
    if name in LOSS_OPS:
        return "loss"
    if "layer_norm" in name and name != "aten::layer_norm":
        return "layer norm"
    if "gelu" in name or name in ACTIVATION_OPS:
        return "activation"
    if name in ("aten::embedding_dense_backward", "aten::embedding_backward", "aten::index_select",
                "aten::index_add_", "aten::index_put_", "aten::_embedding_bag"):
        return "embedding"
    if name in DISPATCH_OPS or name.startswith(("autograd::", "torch::autograd::")) or "Backward" in name:
        return "dispatch"
    if name.startswith("aten::") and any(k in name for k in (
            "mul", "add", "sub", "neg", "div", "cat", "copy", "fill", "zero", "clone", "stack", "sum", "where")):
        return "elementwise"
    return "other ops"


def step_account(events: list[dict], steps: int) -> dict:
    """Seconds per step by category from a torch.profiler Chrome trace of `steps` profiled steps.

    The step's wall time runs from the first `data` range to the end of the last `optimizer` range;
    "python" takes whatever of it no op covers (inside a range or between ranges), so the categories
    add up to the wall time by construction. The check that matters is against the step timed
    without the profiler (benchmarks/mfu.py compares them).
    """
    spans = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "user_annotation")]
    ranges = [e for e in spans if e.get("cat") == "user_annotation" and e["name"] in PHASES]
    if not ranges:
        raise ValueError("no data/forward/backward/optimizer ranges in the trace")
    tid = ranges[0]["tid"]
    spans = sorted((e for e in spans if e["tid"] == tid), key=lambda e: (e["ts"], -e["dur"]))
    first = min(e["ts"] for e in ranges)
    last = max(e["ts"] + e["dur"] for e in ranges)
    us = defaultdict(float)
    per_op = defaultdict(lambda: [0, 0.0, ""])  # name -> [calls, self us, category]
    stack: list[list] = []  # [event, children's us, phase]

    def close(entry) -> None:
        e, children, phase = entry
        own = max(0.0, e["dur"] - children)
        if e.get("cat") == "user_annotation":  # a range's own time: Python between its ops
            us[phase if phase in ("data", "optimizer") else "python"] += own
            return
        cat = categorize(e["name"], phase)
        us[cat] += own
        rec = per_op[e["name"]] if phase not in ("data", "optimizer") else per_op[f"{phase}: {e['name']}"]
        rec[0] += 1
        rec[1] += own
        rec[2] = cat

    for e in spans:
        if not first <= e["ts"] <= last:
            continue
        while stack and e["ts"] >= stack[-1][0]["ts"] + stack[-1][0]["dur"]:
            close(stack.pop())
        if stack:
            stack[-1][1] += e["dur"]
            phase = stack[0][2]
        elif e.get("cat") == "user_annotation" and e["name"] in PHASES:
            phase = e["name"]
        else:
            continue  # between the ranges: counted below as the loop's Python time
        stack.append([e, 0.0, phase])
    while stack:
        close(stack.pop())
    covered = sum(r["dur"] for r in ranges)
    us["python"] += (last - first) - covered  # the loop between the ranges
    wall = (last - first) / steps / 1e6
    seconds = {c: us.get(c, 0.0) / steps / 1e6 for c in CATEGORIES}
    ops = sorted(({"name": n, "calls_per_step": c / steps, "ms_per_step": s / steps / 1e3, "category": cat}
                  for n, (c, s, cat) in per_op.items()), key=lambda o: -o["ms_per_step"])
    return {"wall_seconds_per_step": wall, "seconds_per_step": seconds,
            "sum_seconds_per_step": sum(seconds.values()), "ops": ops}


# ---- the matmuls of a GPT step ----------------------------------------------------------------
def model_gemms(args, batch: int) -> list[dict]:
    """Every matmul of one GPT training step: (M, K) x (K, N) with its count per step.

    nn.Linear without bias runs `mm(x, W.t())` forward; backward (MmBackward0) runs
    `mm(grad, W)` for the input gradient and, because `W.t()` is a column-major view, the weight
    gradient as `mm(grad.t(), x)` transposed (autograd's mm_mat2_backward keeps the layout of the
    operand). The transposed operands are views, as in the model: MKL sees the same layouts.
    """
    M, d, L = batch * args.seq_len, args.d_model, args.n_layer
    layers = [("attn.qkv", d, 3 * d, L), ("attn.proj", d, d, L), ("mlp.fc", d, args.d_ff, L),
              ("mlp.proj", args.d_ff, d, L), ("lm_head", d, args.vocab_size, 1)]
    out = []
    for name, k, n, count in layers:
        out += [
            {"layer": name, "pass": "forward", "a": (M, k), "b": (k, n), "a_t": False, "b_t": True, "count": count},
            {"layer": name, "pass": "input grad", "a": (M, n), "b": (n, k), "a_t": False, "b_t": False,
             "count": count},
            {"layer": name, "pass": "weight grad", "a": (n, M), "b": (M, k), "a_t": True, "b_t": False,
             "count": count},
        ]
    for g in out:
        g["flops"] = 2.0 * g["a"][0] * g["a"][1] * g["b"][1]
    return out


def operand(shape: tuple[int, int], transposed: bool) -> torch.Tensor:
    """A [rows, cols] operand; `transposed`: a transposed view of a contiguous [cols, rows] tensor."""
    if transposed:
        return torch.randn(shape[1], shape[0]).t()
    return torch.randn(*shape)


def time_call(fn, target: float = 0.01, repeats: int = 15) -> float:
    """Best seconds per call of `fn`: warm-up, then `repeats` timings of batches of about `target`
    seconds each (as matmul_peak_flops times the peak: batches of >= 10 ms), the minimum kept.

    The minimum of many short timings is what a shared 2-core machine allows: a timing that another
    process interrupted only reads high, so the best one is the closest to the kernel's own speed.
    """
    for _ in range(3):  # warm-up: kernel selection, thread pool, caches
        fn()
    t0 = time.perf_counter()
    fn()
    first = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, min(10_000, math.ceil(target / first)))
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def time_mm(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    """Best seconds of `torch.mm(a, b)` into a preallocated output, as matmul_peak_flops measures
    the peak: a fresh output per call costs page faults of its own (measured on this machine: 23-41
    minor faults per call for some of the model's shapes, none with `out=`), which the peak's timing
    never pays and which made the model's shapes look slower alone than in the model."""
    out = torch.empty(a.shape[0], b.shape[1])
    return time_call(lambda: torch.mm(a, b, out=out), repeats=repeats)


def time_gemms(gemms: list[dict], repeats: int) -> None:
    """Add `seconds` (best per call of a plain torch.mm with the model's layouts) to each GEMM."""
    for g in gemms:
        a, b = operand(g["a"], g["a_t"]), operand(g["b"], g["b_t"])
        g["seconds"] = time_mm(a, b, repeats)


def square_rates(sizes: tuple[int, ...], repeats: int) -> dict[int, float]:
    """FLOP/s of torch.mm on n x n matrices (the peak's sizes), timed like the model's shapes: the
    reference that says whether the machine ran at its peak while the shapes were timed."""
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        out[n] = 2.0 * n**3 / time_mm(a, b, repeats)
    return out


def time_attention(args, batch: int, repeats: int) -> dict:
    """SDPA (causal) forward and forward+backward at the model's shape, and the per-head matmuls
    of plain attention (QK^T and PV as one bmm over batch x heads) for comparison."""
    B, H, T = batch, args.n_head, args.seq_len
    hd = args.d_model // args.n_head
    q, k, v = (torch.randn(B, H, T, hd, requires_grad=True) for _ in range(3))
    grad = torch.randn(B, H, T, hd)

    def fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def fwd_bwd():
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.autograd.grad(y, (q, k, v), grad)

    qh, kh = torch.randn(B * H, T, hd), torch.randn(B * H, T, hd).transpose(1, 2)
    p, vh = torch.randn(B * H, T, T), torch.randn(B * H, T, hd)
    scores, context = torch.empty(B * H, T, T), torch.empty(B * H, T, hd)  # preallocated, as time_mm
    # Model FLOPs of one layer's attention, full T x T as in flops_per_token: QK^T and PV forward.
    fwd_flops = 4.0 * B * H * T * T * hd
    return {"shape": [B, H, T, hd], "forward_flops": fwd_flops, "train_flops": 3 * fwd_flops,
            "sdpa_forward_seconds": time_call(fwd, repeats=repeats),
            "sdpa_train_seconds": time_call(fwd_bwd, repeats=repeats),
            "bmm_qk_seconds": time_call(lambda: torch.bmm(qh, kh, out=scores), repeats=repeats),
            "bmm_pv_seconds": time_call(lambda: torch.bmm(p, vh, out=context), repeats=repeats),
            "bmm_flops": 2.0 * B * H * T * T * hd}


def mm_shapes_per_step(key_averages, steps: int) -> Counter:
    """(a shape, b shape) -> calls per step of aten::mm, from key_averages(group_by_input_shape=True)."""
    out: Counter = Counter()
    for a in key_averages:
        if a.key == "aten::mm" and a.input_shapes and len(a.input_shapes) >= 2:
            out[(tuple(a.input_shapes[0]), tuple(a.input_shapes[1]))] += a.count / steps
    return out
