"""GPU throughput and MFU of `scaletrain train` itself, on one GPU.

Each case is the real CLI in a subprocess — `python -m scaletrain train PRESET <overrides>` — in bf16
autocast with `train.compile=true` (fused AdamW and SDPA are the trainer's defaults on CUDA). The
figures come from the run folder: tokens/s is the median of the logged windows after the first
(which holds the compilation), the FLOPs per token and the measured matmul peak are summary.json's.
MFU is reported against both peaks:

- the GPU's datasheet dense bf16 peak (`scaletrain.diagnose.devices`: H100/H200 989 TFLOP/s, A100
  312), the convention of torchtitan and nanoGPT, `gpu_mfu`;
- the bf16 matmul peak measured on this GPU by the trainer (`scaletrain.hardware`, what
  summary.json's `mfu` uses), `gpu_mfu_measured_peak`.

Cases: `gpt2-small` (the `gpt` preset at GPT-2 small's shape: 12 layers, d_model 768, context 1,024,
vocabulary 50,304, learned positions) and `llama` (the `llama` preset as shipped). `--write` puts
the table in docs/performance.md (its GPU section) and `gpu_*` keys in docs/results/performance.json.
Without a CUDA GPU it says so and exits 2.

    python benchmarks/gpu.py --write                      # both cases
    python benchmarks/gpu.py --case gpt2-small --steps 60 --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scaletrain.diagnose.devices import KNOWN_DEVICES  # noqa: E402

CASES = {
    "gpt2-small": ("gpt", ["model.n_layer=12", "model.n_head=12", "model.d_model=768", "model.rope=false",
                           "model.dropout=0", "data.vocab_size=50304", "data.seq_len=1024"]),
    "llama": ("llama", []),
}
# Every case: bf16 + compile on the GPU, nothing but training timed (no evaluation, sample or
# checkpoint until the end), one log window per `--log-every` steps.
COMMON = ["train.device=cuda", "train.precision=bf16", "train.compile=true", "log.progress=false",
          "log.tensorboard=false", "log.sample_tokens=0", "train.eval_every=0", "train.final_eval_batches=1",
          "train.checkpoint_every=0", "train.grad_accum=1", "train.max_minutes=30", "schedule.budget=steps"]


_LOCAL = ("train.run_dir=", "data.cache_dir=")  # this machine's paths: not part of the command shown


def datasheet_peak(gpu_name: str) -> tuple[str | None, float | None]:
    """(table key, dense bf16 FLOP/s) of a known GPU, from its name ("NVIDIA H200" -> h200)."""
    lowered = gpu_name.lower()
    for key, device in KNOWN_DEVICES.items():
        if key in lowered:
            return key, device.peak_flops["bf16"]
    return None, None


def run_case(name: str, steps: int, batch: int | None, log_every: int, work: Path, cache_dir: str | None,
             extra: list[str], timeout: float) -> dict:
    """`scaletrain train` for one case; its figures, or {"error": ...} when the run failed."""
    preset, overrides = CASES[name]
    run_dir = work / name
    args = [*overrides, *COMMON, f"train.max_steps={steps}", f"log.every={log_every}",
            f"schedule.warmup_steps={min(10, steps // 4)}", f"train.run_dir={run_dir}", *extra]
    if batch:
        args.append(f"train.batch_size={batch}")
    if cache_dir:
        args.append(f"data.cache_dir={cache_dir}")
    command = [sys.executable, "-m", "scaletrain", "train", preset, *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    began = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=work)
    except subprocess.TimeoutExpired:
        return {"case": name, "preset": preset, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()] or ["(no output)"]
        return {"case": name, "preset": preset, "error": f"exit {proc.returncode}: {lines[-1][:300]}"}
    summary, config = json.loads((run_dir / "summary.json").read_text()), _config(run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [r["tokens_per_second"] for r in records if r.get("split") == "train" and "tokens_per_second" in r]
    steady = windows[1:] or windows  # the first window holds torch.compile's compilation
    return {
        "case": name, "preset": preset, "overrides": args,
        "command": " ".join(["scaletrain", "train", preset, *(x for x in args if not x.startswith(_LOCAL))]),
        "tokens_per_second": statistics.median(steady), "tokens_per_second_whole_run": summary["tokens_per_second"],
        "flops_per_token": summary["flops_per_token"], "parameters": summary["parameters"],
        "measured_peak_flops": summary["matmul_peak_flops"], "peak_memory_bytes": summary["peak_memory_bytes"],
        "batch": [summary["global_batch_size"], config["data"].get("seq_len")], "steps": summary["steps"],
        "train_loss": summary["train_loss"], "precision": config["train"]["precision"],
        "wall_seconds": time.perf_counter() - began, "windows": windows,
    }


def _config(run_dir: Path) -> dict:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())


def with_mfu(r: dict, datasheet: float | None) -> dict:
    if "error" in r:
        return r
    flops = r["flops_per_token"] * r["tokens_per_second"]
    r["model_flops_per_second"] = flops
    r["mfu_datasheet"] = flops / datasheet if datasheet else None
    r["mfu_measured_peak"] = flops / r["measured_peak_flops"]
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="default: every case")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=16, help="train.batch_size (sequences per step)")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, help="datasheet dense bf16 peak of a GPU not in the table")
    ap.add_argument("--cache-dir", help="data.cache_dir (default: the preset's)")
    ap.add_argument("--work", help="folder for the run folders (default: a temporary one)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per case")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--write", action="store_true", help="update docs/performance.md and docs/results/performance.json")
    ap.add_argument("overrides", nargs="*", help="more section.key=value overrides for every case")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: benchmarks/gpu.py needs a CUDA GPU, and none is present here "
              "(torch.cuda.is_available() is False); nothing was measured", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name()
    key, datasheet = datasheet_peak(gpu)
    if a.peak_tflops:
        key, datasheet = "--peak-tflops", a.peak_tflops * 1e12
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="scaletrain-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    results = [with_mfu(run_case(name, a.steps, a.batch, a.log_every, work, a.cache_dir, a.overrides, a.timeout),
                        datasheet) for name in (a.case or list(CASES))]
    report = {"gpu": gpu, "gpu_datasheet": key, "gpu_peak_flops": datasheet, "gpu_cases": results,
              "torch": torch.__version__, "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d")}
    main_case = next((r for r in results if r["case"] == "gpt2-small" and "error" not in r), None)
    if main_case is not None:  # the headline figure (docs/performance.md's summary)
        report.update(gpu_mfu=main_case["mfu_datasheet"], gpu_mfu_measured_peak=main_case["mfu_measured_peak"],
                      gpu_tokens_per_second=main_case["tokens_per_second"])
    print(json.dumps(report, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    if a.write:
        from docs_out import merge_results

        merge_results(ROOT / "docs" / "results" / "performance.json",
                      {k: v for k, v in report.items() if k.startswith("gpu") or k == "cuda"})
        write_gpu_section(report, a)
    return 0 if all("error" not in r for r in results) else 1


START, END = "<!-- gpu:start -->", "<!-- gpu:end -->"


def _pct(x: float | None) -> str:
    return f"{x:.3f}" if x is not None else "–"


def write_gpu_section(r: dict, a: argparse.Namespace) -> None:
    from docs_out import write_section

    peak = f"{r['gpu_peak_flops'] / 1e12:.0f} TFLOP/s ({r['gpu_datasheet']})" if r["gpu_peak_flops"] else \
        "unknown (pass --peak-tflops)"
    lines = [START, "## GPU: `scaletrain train` on one GPU", "",
             f"Measured {r['date']} by `python benchmarks/gpu.py --steps {a.steps} --batch {a.batch} --write` on one "
             f"{r['gpu']}, torch {r['torch']} (CUDA {r['cuda']}): each case is the real `scaletrain train` in a "
             "subprocess, bf16 autocast, `train.compile=true`, fused AdamW, SDPA. Tokens/s is the median of the "
             f"logged windows of {a.log_every} steps after the first (which holds the compilation). MFU = FLOPs "
             f"per token × tokens/s over the datasheet dense bf16 peak, {peak} (the convention of "
             "torchtitan and nanoGPT), and over the bf16 matmul peak measured on this GPU (summary.json's `mfu`).",
             "", "| case | parameters | batch × context | tokens/s | MFU (datasheet) | MFU (measured peak) | "
             "measured peak | peak memory |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in r["gpu_cases"]:
        if "error" in c:
            lines.append(f"| {c['case']} (`{c['preset']}`) | – | – | – | – | – | – | failed: {c['error']} |")
            continue
        lines.append(f"| {c['case']} (`{c['preset']}`) | {c['parameters'] / 1e6:.0f} M | {c['batch'][0]} × "
                     f"{c['batch'][1]} | {c['tokens_per_second']:,.0f} | **{_pct(c['mfu_datasheet'])}** | "
                     f"{_pct(c['mfu_measured_peak'])} | {c['measured_peak_flops'] / 1e12:.0f} TFLOP/s | "
                     f"{c['peak_memory_bytes'] / 2**30:.1f} GiB |")
    lines += ["", "Commands: " + "; ".join(f"`{c['command']}`" for c in r["gpu_cases"] if "command" in c), "",
              "Target (issue 9): MFU ≥ 0.45 on an H100/H200-class GPU, against the datasheet peak.", END]
    write_section(ROOT / "docs" / "performance.md", START, END, "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
