"""Compression targets, measured: every method on a trained GPT and MLP preset run.

    .venv/bin/python benchmarks/compress.py --gpt-run RUN --mlp-run RUN [--only mlp]

Each method goes through `scaletrain.compress.compress` (the CLI's code path) into OUT_ROOT/PRESET-METHOD;
the figures land in docs/results/compress.json (keyed by preset and method: size_ratio,
speedup_b1, speedup_b64, quality_before, quality_after) after every method, so a partial run keeps
what it measured, and the table between the markers of docs/compression.md is rewritten.
Train the runs first (`scaletrain train gpt train.run_dir=...`, `scaletrain train mlp-digits ...`).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "compress.json"
DOC = ROOT / "docs" / "compression.md"
INT8 = ("int8-dynamic", "int8-weight", "onnx-int8")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def targets(preset: str, method: str, r: dict) -> dict:
    """Each target of the issue that applies, as {name: met?}."""
    t = {}
    if method in INT8:
        t["size <= 0.26x"] = r["size_ratio"] <= 0.26
        t["speedup b64 >= 2x"] = r["speedup_b64"] >= 2.0
        if preset == "gpt":
            t["perplexity +<= 3%"] = r["quality_after"] <= 1.03 * r["quality_before"]
        else:
            t["accuracy -<= 1 point"] = r["quality_after"] >= r["quality_before"] - 0.01
    if method == "prune-structured":
        t["speedup b64 >= 1.5x"] = r["speedup_b64"] >= 1.5
    if method == "distill":
        better = (r["quality_after"] < r["quality_scratch"]) if preset == "gpt" else (r["quality_after"] > r["quality_scratch"])
        t["distilled beats scratch"] = better
        t["student <= 0.25x+ params"] = r["param_ratio"] <= 0.27
    return t


def figures(summary: dict, seconds: float) -> dict:
    rows = summary["rows"]
    r = {k: summary[k] for k in ("size_ratio", "speedup_b1", "speedup_b64", "quality_before", "quality_after",
                                 "quality_metric")}
    r["param_ratio"] = rows[1]["parameters"] / rows[0]["parameters"]
    r["latency_ms"] = {row["model"]: row["latency_ms"] for row in rows}
    r["quality"] = {row["model"]: row["quality"] for row in rows}
    r["size_bytes"] = {row["model"]: row["size_bytes"] for row in rows}
    for key in ("onnx_max_abs_diff", "onnx_int8_max_abs_diff", "student", "int8_backend", "int8_backend_reason",
                "warnings"):
        if key in summary:
            r[key] = summary[key]
    for key in ("sparsity", "ranks", "hidden", "layer_heads", "layer_d_ff", "finetune_steps", "steps"):
        if key in rows[1]:
            r[key] = rows[1][key]
    if summary["method"] == "distill" and len(rows) > 2:
        r["quality_scratch"] = rows[2]["quality"][summary["quality_metric"]]
    r["seconds"] = seconds
    return r


def table(results: dict) -> str:
    lines = ["| preset | method | size ratio | speedup b1 | speedup b64 | quality before | quality after | targets |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for preset, methods in results["presets"].items():
        for method, r in methods.items():
            q = r["quality_metric"].replace("val_", "")
            after = f"{r['quality_after']:.4g}"
            if "quality_scratch" in r:
                after += f" (scratch {r['quality_scratch']:.4g})"
            marks = ", ".join(f"{k}: {'yes' if v else '**no**'}" for k, v in r["targets"].items()) or "-"
            lines.append(f"| {preset} | {method} | {r['size_ratio']:.3f} | {r['speedup_b1']:.2f}x | "
                         f"{r['speedup_b64']:.2f}x | {q} {r['quality_before']:.4g} | {after} | {marks} |")
    m = results["machine"]
    lines += ["", f"Measured {results['date']} on {m['cpu']} ({m['cores']} cores, shared), "
              f"torch {results['versions']['torch']}, torchao {results['versions']['torchao']}, "
              f"onnxruntime {results['versions']['onnxruntime']}; latency at {results['threads']} thread, "
              "p50 of interleaved rounds. Runs: " + ", ".join(f"{k} `{v}`" for k, v in results["runs"].items())]
    return "\n".join(lines)


def write(results: dict) -> None:
    from docs_out import write_results
    from scaletrain.atomic import write_text_atomic

    write_results(RESULTS, results)
    if DOC.is_file():
        text = DOC.read_text()
        block = f"<!-- bench:start -->\n{table(results)}\n<!-- bench:end -->"
        text = re.sub(r"<!-- bench:start -->.*<!-- bench:end -->", lambda _: block, text, flags=re.S)
        write_text_atomic(DOC, text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpt-run")
    ap.add_argument("--mlp-run")
    ap.add_argument("--out-root", default="/tmp/compress-bench")
    ap.add_argument("--only", choices=["gpt", "mlp"])
    ap.add_argument("--methods", nargs="*")
    ap.add_argument("--gpt-finetune-steps", type=int, default=100)
    ap.add_argument("--mlp-finetune-steps", type=int, default=200)
    ap.add_argument("--gpt-distill-steps", type=int, default=150)
    ap.add_argument("--mlp-distill-steps", type=int, default=1000)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--latency-rounds", type=int, default=5)
    args = ap.parse_args()

    from scaletrain.compress import METHODS, compress
    from scaletrain.compress.report import versions
    from scaletrain.provenance import stamp

    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.update({"date": datetime.date.today().isoformat(), "threads": 1, "versions": versions(),
                    "machine": {"cpu": cpu_name(), "cores": __import__("os").cpu_count(),
                                "platform": platform.platform()}})
    results.setdefault("presets", {})
    results.setdefault("runs", {})
    runs = {"gpt": args.gpt_run, "mlp": args.mlp_run}
    for preset, run in runs.items():
        if not run or (args.only and preset != args.only):
            continue
        results["runs"][preset] = run
        for method in args.methods or METHODS:
            out = Path(args.out_root) / f"{preset}-{method}"
            shutil.rmtree(out, ignore_errors=True)
            opts = {"eval_batches": args.eval_batches, "latency_rounds": args.latency_rounds, "threads": 1}
            if method in ("prune", "prune-structured", "lowrank"):
                opts["finetune_steps"] = getattr(args, f"{preset}_finetune_steps")
            if method == "distill":
                opts["distill_steps"] = getattr(args, f"{preset}_distill_steps")
            start = time.perf_counter()
            summary = compress(run, method, out, **opts)
            r = figures(summary, time.perf_counter() - start)
            r["targets"] = targets(preset, method, r)
            r["provenance"] = stamp("python benchmarks/compress.py " + " ".join(sys.argv[1:]))  # per row: reruns mix
            results["presets"].setdefault(preset, {})[method] = r
            write(results)
            print(f"{preset} {method}: size {r['size_ratio']:.3f} speedup b1 {r['speedup_b1']:.2f} "
                  f"b64 {r['speedup_b64']:.2f} quality {r['quality_before']:.4g} -> {r['quality_after']:.4g} "
                  f"{r['targets']} ({r['seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
