"""benchmarks/summary.py: a target is called met only when the measured figure reaches it."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import main_job  # noqa: E402
import summary  # noqa: E402


def _verdicts(d: dict, compress: dict | None = None) -> dict[str, str]:
    return {what: v for what, _, _, v in summary.rows(d, compress)}


def test_overhead_verdict_follows_the_interleaved_ratio():
    d = {"overhead_ratio": {"gpt": {"fp32": {"interleaved": 0.995, "separate_runs": 0.9}},
                            "mlp": {"fp32": {"interleaved": 0.989, "separate_runs": 1.2}}}}
    v = _verdicts(d)
    assert v["overhead, GPT preset (trainer ÷ hand loop)"] == "met"
    assert v["overhead, MLP preset (trainer ÷ hand loop)"] == "**not met**"


def _summary(**kw) -> dict:
    base = {"val_bpb": 1.75, "val_loss": 3.6, "unigram_loss": 6.2, "tokens_per_second": 10_000.0,
            "precision": "bf16", "precision_reason": "auto: ...", "mfu": 0.4, "mfu_peak_dtype": "bfloat16",
            "matmul_peak_flops": 4e11, "flops_per_token": 1.4e7, "parameters": 2_160_000, "steps": 2500,
            "train_seconds": 270.0, "wall_seconds": 299.0, "stopped_by": "max_steps", "peak_memory_bytes": 1}
    return {**base, **kw}


def _main_job(summary_kw: dict, seconds: float, loop: float, flags: dict) -> dict:
    loops = [{"tokens_per_second": loop}, {"tokens_per_second": loop}]
    return {"main_job": main_job.assess(_summary(**summary_kw), seconds, loops, flags)}


NATIVE = {"AVX2": True, "AVX512-BF16": True, "AMX": False, "VNNI": True}
AVX2 = {"AVX2": True, "AVX512-BF16": False, "AMX": False, "VNNI": False}


def test_the_main_job_target_depends_on_the_cpu_kind():
    v = _verdicts(_main_job({"val_bpb": 1.75}, 320.0, 6000.0, NATIVE))
    assert v["main job: val_bpb after ≤ 5 min of training, native bf16 CPU"] == "**not met**"  # 1.75 > 1.70
    assert v["main job: whole command, data prepared"] == "met"
    assert v["main job tokens/s ÷ a plain nanoGPT-style loop, same run"] == "met"  # 10,000 / 6,000 = 1.67
    v = _verdicts(_main_job({"val_bpb": 1.75, "precision": "fp32", "mfu_peak_dtype": "float32"}, 340.0, 7000.0, AVX2))
    assert v["main job: val_bpb after ≤ 5 min of training, AVX2-only CPU"] == "met"  # 1.75 <= 1.80
    assert v["main job: whole command, data prepared"] == "**not met**"
    assert v["main job tokens/s ÷ a plain nanoGPT-style loop, same run"] == "**not met**"  # 1.43
    assert v["MFU against the bf16 matmul peak"] == "not applicable on this CPU"


def test_an_emulated_avx2_run_gets_its_own_row_on_a_native_cpu():
    d = _main_job({"val_bpb": 1.68}, 300.0, 6000.0, NATIVE)
    fp32 = {"val_bpb": 1.83, "precision": "fp32", "mfu_peak_dtype": "float32"}
    d["main_job_avx2_emulated"] = main_job.assess(_summary(**fp32), 310.0, [{"tokens_per_second": 9000.0}],
                                                  {**NATIVE, "AVX512-BF16": False})
    row = "main job: val_bpb after ≤ 5 min of training, AVX2-only CPU (emulated: kernels limited to AVX2 on this CPU)"
    assert _verdicts(d)[row] == "**not met** (emulated)"  # 1.83 > 1.80
    d["main_job_avx2_emulated"]["targets"]["val_bpb"]["met"] = True
    assert _verdicts(d)[row] == "met (emulated)"
    assert _verdicts(d)["main job: val_bpb after ≤ 5 min of training, native bf16 CPU"] == "met"
    # an AVX2-only CPU measures the target itself: no emulated row there
    avx2 = _main_job({"val_bpb": 1.75, "precision": "fp32", "mfu_peak_dtype": "float32"}, 300.0, 6000.0, AVX2)
    avx2["main_job_avx2_emulated"] = d["main_job_avx2_emulated"]
    assert row not in _verdicts(avx2)


def test_an_mfu_above_one_is_not_met_and_bf16_mfu_counts_only_where_native():
    v = _verdicts(_main_job({"mfu": 1.78}, 300.0, 5000.0, NATIVE))
    assert v["main job MFU against the bfloat16 matmul peak"] == "**not met**"
    assert v["MFU against the bf16 matmul peak"].startswith("**invalid: above 1**")
    assert _verdicts(_main_job({"mfu": 0.55}, 300.0, 5000.0, NATIVE))["MFU against the bf16 matmul peak"] == "met"


def test_no_figure_is_not_measured_never_met():
    v = _verdicts({})
    assert v["GPU MFU, GPT-2 small, bf16 + compile"] == "not measured"
    assert v["scaling on 2 ranks vs one 2-thread process"] == "not measured"
    assert all(verdict != "met" for verdict in v.values())


def test_scaling_is_met_only_with_every_layout_and_its_communication():
    layout = {"tokens_per_second": 5000.0, "vs_single_2_threads": 0.9, "comm_bytes_per_step": 1.0}
    d = {"scaling_detail": {k: dict(layout) for k in ("ddp", "zero1", "fsdp", "tp")}}
    assert _verdicts(d)["scaling on 2 ranks vs one 2-thread process"] == "met"
    del d["scaling_detail"]["tp"]
    assert _verdicts(d)["scaling on 2 ranks vs one 2-thread process"] == "**not met**"


def test_int8_gpt_needs_one_method_meeting_all_three():
    def r(size, speed, before, after):
        return {"size_ratio": size, "speedup_b64": speed, "quality_before": before, "quality_after": after}

    c = {"presets": {"gpt": {"int8-dynamic": r(0.25, 0.5, 50.0, 50.5), "onnx-int8": r(0.30, 2.4, 50.0, 51.0)}}}
    v = _verdicts({}, c)
    assert v["int8 GPT: size ratio"] == "met" and v["int8 GPT: speedup at batch 64"] == "met"
    assert v["int8 GPT: perplexity change"] == "met"
    assert v["int8 GPT: one method meets all three"] == "**not met**"  # no single method does
    c["presets"]["gpt"]["onnx-int8-static"] = r(0.24, 2.1, 50.0, 51.4)
    assert _verdicts({}, c)["int8 GPT: one method meets all three"] == "met"
