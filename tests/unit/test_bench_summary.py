"""benchmarks/summary.py: a target is called met only when the measured figure reaches it."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import summary  # noqa: E402


def _verdicts(d: dict) -> dict[str, str]:
    return {what: v for what, _, _, v in summary.rows(d)}


def test_overhead_verdict_follows_the_interleaved_ratio():
    d = {"overhead_ratio": {"gpt": {"fp32": {"interleaved": 0.995, "separate_runs": 0.9}},
                            "mlp": {"fp32": {"interleaved": 0.989, "separate_runs": 1.2}}}}
    v = _verdicts(d)
    assert v["overhead, GPT preset (trainer ÷ hand loop)"] == "met"
    assert v["overhead, MLP preset (trainer ÷ hand loop)"] == "**not met**"


def test_no_gpu_figure_is_not_measured_and_bf16_without_native_support_is_not_applicable():
    d = {"mfu_cpu_fp32": 0.56, "mfu_cpu_bf16": 1.7, "matmul_peak_flops_fp32": 150e9,
         "matmul_peak_flops_bf16": 2e9}
    v = _verdicts(d)
    assert v["GPU MFU, GPT-2 small, bf16 + compile"] == "not measured"
    assert v["MFU against the bf16 matmul peak"] == "not applicable on this CPU"
    d["matmul_peak_flops_bf16"] = 300e9  # a CPU with native bf16: the figure counts
    d["mfu_cpu_bf16"] = 0.4
    assert _verdicts(d)["MFU against the bf16 matmul peak"] == "**not met**"
