"""The main job's speed and time to quality, measured: `scaletrain train gpt` as `make demo` runs it.

1. The default preset (fp32) with evaluations every 150 steps on 8 batches: validation loss against
   training time (the curve `docs/time_to_quality.png`), tokens/s and MFU against the measured fp32
   matmul peak. The extra evaluations are not counted in training time (the trainer's clock stops
   at loop edges), so the curve is the demo's.
2. The same preset in bf16 autocast for a few steps: tokens/s and MFU against the measured bf16
   matmul peak of this machine (on CPUs without native bf16 that peak is tiny; the table says so).

Writes the "Main job" section of docs/performance.md and the keys `tokens_per_second`,
`mfu_cpu_fp32`, `mfu_cpu_bf16`, `time_to_quality` of docs/results/performance.json.

    python benchmarks/main_job.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
START, END = "<!-- main-job:start -->", "<!-- main-job:end -->"


def train(run_dir: Path, *overrides: str) -> tuple[dict, list[dict]]:
    cmd = [sys.executable, "-m", "scaletrain", "train", "gpt", "log.progress=false",
           f"train.run_dir={run_dir}", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return json.loads((run_dir / "summary.json").read_text()), records


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from docs_out import merge_results, write_section
    from scaletrain.hardware import machine_info

    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--fp32-run", default=None, help="reuse a finished fp32 run of this script")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scaletrain-mainjob-"))
    began = time.time()
    if a.fp32_run:
        run = Path(a.fp32_run)
        fp32 = json.loads((run / "summary.json").read_text())
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    else:
        fp32, records = train(work / "fp32", "train.eval_every=150", "train.eval_batches=8")
    bf16, _ = train(work / "bf16", "train.precision=bf16", "train.max_steps=20", "train.eval_every=0",
                    "schedule.warmup_steps=0", "train.final_eval_batches=1", "log.sample_tokens=0",
                    "train.max_minutes=10")
    elapsed_at = {r["step"]: r["elapsed"] for r in records if r.get("split") == "train"}
    curve = []
    for r in records:
        if r.get("split") == "val" and r["step"] in elapsed_at:
            curve.append({"step": r["step"], "train_seconds": elapsed_at[r["step"]], "val_loss": r["val_loss"],
                          "val_bpb": r.get("val_bpb")})
    final = {"step": fp32["steps"], "train_seconds": fp32["train_seconds"], "val_loss": fp32["val_loss"],
             "val_bpb": fp32.get("val_bpb")}
    if not curve or curve[-1]["step"] != final["step"]:
        curve.append(final)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([c["train_seconds"] for c in curve], [c["val_loss"] for c in curve], marker="o")
    ax.axhline(fp32.get("unigram_loss", float("nan")), color="grey", linestyle="--", label="unigram baseline")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("scaletrain train gpt: time to quality")
    ax.legend()
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "time_to_quality.png", dpi=120)

    info = machine_info()
    merge_results(ROOT / "docs" / "results" / "performance.json", {
        "tokens_per_second": fp32["tokens_per_second"],
        "mfu_cpu_fp32": fp32["mfu"],
        "mfu_cpu_bf16": bf16["mfu"],
        "tokens_per_second_bf16": bf16["tokens_per_second"],
        "matmul_peak_flops_fp32": fp32["matmul_peak_flops"],
        "matmul_peak_flops_bf16": bf16["matmul_peak_flops"],
        "time_to_quality": curve,
        "main_job_machine": {**info, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__},
    })

    lines = [START, "## Main job: speed and time to quality", "",
             f"Measured {time.strftime('%Y-%m-%d')} by `python benchmarks/main_job.py` ({(time.time() - began) / 60:.0f} min), "
             f"torch {torch.__version__}, {info.get('cpu', 'this CPU')}. `scaletrain train gpt` as `make demo` runs it, "
             "with evaluations every 150 steps (on 8 batches) for the curve; evaluation time is not training time."
             " The preset's size, batch, learning rate and schedule were tuned for the lowest validation loss in five minutes on this machine: the sweep is in [main_job.md](main_job.md).", "",
             "| precision | tokens/s | model FLOP/s | matmul peak measured here | MFU |",
             "|---|---:|---:|---:|---:|"]
    for name, s in (("fp32 (the preset)", fp32), ("bf16 autocast, 20 steps", bf16)):
        flops = s["tokens_per_second"] * s["flops_per_token"]
        lines.append(f"| {name} | {s['tokens_per_second']:,.0f} | {flops / 1e9:.1f} G | "
                     f"{s['matmul_peak_flops'] / 1e9:.1f} G | {s['mfu']:.2f} |")
    lines += ["", "This CPU has no native bf16 (AVX2 only, no AVX512-BF16 or AMX): its bf16 matmul peak is "
              "a few GFLOP/s against ~150 in fp32, so the preset trains in fp32 and the bf16 MFU is measured "
              "against that slow peak. The issue's bf16 target assumes a CPU with native bf16. An MFU above 1 "
              "says that the bf16 \"peak\" measured here (large square matmuls) is not this CPU's best bf16 "
              "rate for every shape: with no native bf16 instructions the library's conversion paths differ "
              "by shape, so no bf16 figure here is a meaningful utilization.", "",
              "![time to quality](time_to_quality.png)", "",
              "| step | training time (s) | val loss | val bits/byte |", "|---:|---:|---:|---:|"]
    for c in curve:
        bpb = f"{c['val_bpb']:.3f}" if c.get("val_bpb") is not None else ""
        lines.append(f"| {c['step']} | {c['train_seconds']:.0f} | {c['val_loss']:.3f} | {bpb} |")
    lines.append(END)
    block = "\n".join(lines)
    write_section(ROOT / "docs" / "performance.md", START, END, block)
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
