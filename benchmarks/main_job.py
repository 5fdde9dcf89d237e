"""The main job, measured as `make demo` runs it, beside a plain nanoGPT-style loop.

1. A plain nanoGPT-style loop (benchmarks/nanogpt_loop.py: fp32, learned positions, fused AdamW,
   the same model shape, tokens and batch) trains for `--nanogpt-seconds`: its tokens/s.
2. `scaletrain train` with no argument (the `gpt` preset, its automatic precision and its
   five-minute time budget), timed as a whole command with the data already prepared: validation
   bits per byte, tokens/s, MFU, the steps the budget fitted, the curve of validation loss against
   training time (the preset's own evaluations: nothing is added to the demo's run).
3. The nanoGPT loop again: the ratio divides scaletrain's tokens/s by the mean of the two loop runs,
   so that a drift of the machine during the run hits both sides alike.

Targets, computed against what this CPU has (its flags are recorded): val_bpb ≤ 1.70 where bf16 is
native (AVX512-BF16 or AMX), ≤ 1.80 on an AVX2-only CPU; the whole command ≤ 5 min 30 s; tokens/s
≥ 1.5× the plain loop. MFU is against the matmul peak of the precision the run used, bf16's only
where bf16 is native (an emulated bf16 peak is no ceiling).

Writes the README's main-job block (between `<!-- mainjob:start -->` and `<!-- mainjob:end -->`),
the "Main job" section of docs/performance.md, docs/time_to_quality.png and the keys `main_job`,
`tokens_per_second`, `time_to_quality` of docs/results/performance.json (each stamped with git
commit, time and CPU flags).

    python benchmarks/main_job.py [--keep-run DIR]                  # about 8 minutes
    python benchmarks/main_job.py --minutes 0.2 --nanogpt-seconds 5  # a smoke run (figures meaningless)
    python benchmarks/main_job.py --render                           # the docs again from the results JSON
    python benchmarks/main_job.py --emulate-avx2                     # both runs with the kernels limited to AVX2

`--emulate-avx2` measures the AVX2-only target on a CPU that has more: both runs get
ATEN_CPU_CAPABILITY=avx2 (torch's own kernels), ONEDNN_MAX_CPU_ISA=AVX2 and MKL_ENABLE_INSTRUCTIONS=AVX2
(the matmul libraries), so bf16 is emulated (~1 GFLOP/s) and `precision=auto` must find that out by
measuring. Its figures go to the key `main_job_avx2_emulated` and their own section; the README
block and the native figures stay. An emulation, not an AVX2-only machine: the clock, caches and
memory are this CPU's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
START, END = "<!-- main-job:start -->", "<!-- main-job:end -->"
README_START, README_END = "<!-- mainjob:start -->", "<!-- mainjob:end -->"

TARGET_BPB_NATIVE_BF16 = 1.70
TARGET_BPB_AVX2 = 1.80
TARGET_COMMAND_SECONDS = 330.0
TARGET_VS_NANOGPT = 1.5
AVX2_START, AVX2_END = "<!-- main-job-avx2:start -->", "<!-- main-job-avx2:end -->"
# The instruction-set limits of --emulate-avx2 (torch's dispatch, oneDNN, MKL).
AVX2_LIMITS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2",
               "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
# Figures this benchmark published before and no longer does (an emulated bf16 MFU above 1).
STALE_KEYS = ("mfu_cpu_fp32", "mfu_cpu_bf16", "tokens_per_second_bf16", "matmul_peak_flops_fp32",
              "matmul_peak_flops_bf16", "main_job_machine")


def child_env(limits: dict | None = None) -> dict:
    """The environment of the runs: this checkout's code first (a venv may hold another install),
    and the instruction-set `limits` of --emulate-avx2."""
    path = os.pathsep.join(x for x in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if x)
    return {**os.environ, **(limits or {}), "PYTHONWARNINGS": "ignore", "PYTHONPATH": path}


def emulation_check(limits: dict) -> dict:
    """In a child with `limits`: torch's CPU dispatch level (that the emulation took) and what
    `precision=auto` decides there; its matmul peaks are measured and cached now, before the timing."""
    code = ("import json, torch; from scaletrain.hardware import choose_precision; "
            "print(json.dumps([torch.backends.cpu.get_cpu_capability(), *choose_precision('auto', 'cpu')]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=child_env(limits)).stdout.strip().splitlines()[-1]
    capability, precision, reason = json.loads(out)
    return {"limits": limits, "cpu_capability": capability, "precision_auto": precision, "precision_reason": reason}


def nanogpt(seconds: float, limits: dict | None = None) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "nanogpt_loop.py"), "--seconds", str(seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=ROOT,
                          env=child_env(limits))
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def scaletrain_train(run_dir: Path, minutes: float | None,
                     limits: dict | None = None) -> tuple[dict, list[dict], float, str]:
    """`scaletrain train` as `make demo` runs it (no progress bar: a file, not a terminal)."""
    cmd = [sys.executable, "-m", "scaletrain", "train", "log.progress=false", f"train.run_dir={run_dir}"]
    if minutes is not None:
        cmd.append(f"train.max_minutes={minutes}")
    began = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=7200, cwd=ROOT,
                          env=child_env(limits))
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return json.loads((run_dir / "summary.json").read_text()), records, seconds, proc.stdout


def curve_of(summary: dict, records: list[dict]) -> list[dict]:
    """Validation loss at each evaluation against the training time at its step."""
    elapsed = {r["step"]: r["elapsed"] for r in records if r.get("split") == "train"}
    out = [{"step": r["step"], "train_seconds": elapsed[r["step"]], "val_loss": r["val_loss"],
            "val_bpb": r.get("val_bpb")} for r in records if r.get("split") == "val" and r["step"] in elapsed]
    if not out or out[-1]["step"] != summary["steps"]:
        out.append({"step": summary["steps"], "train_seconds": summary["train_seconds"],
                    "val_loss": summary["val_loss"], "val_bpb": summary.get("val_bpb")})
    return out


def verdict(ok: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[ok]


def assess(summary: dict, command_seconds: float, loops: list[dict], flags: dict) -> dict:
    """The main job's figures and the issue's targets, computed for this CPU."""
    native = bool(flags.get("AVX512-BF16") or flags.get("AMX"))
    target_bpb = TARGET_BPB_NATIVE_BF16 if native else TARGET_BPB_AVX2
    loop_tps = sum(r["tokens_per_second"] for r in loops) / len(loops)
    ratio = summary["tokens_per_second"] / loop_tps
    mfu = summary["mfu"]
    if summary["precision"] == "bf16" and summary.get("mfu_peak_dtype") == "bfloat16":
        bf16_mfu = {"value": mfu, "note": "against the measured bf16 matmul peak (bf16 is native here)"}
    elif native:
        bf16_mfu = {"value": None, "note": f"not reported: the run trained in {summary['precision']} "
                                           f"({summary.get('precision_reason', '')})"}
    else:
        bf16_mfu = {"value": None, "note": "not reported: this CPU has no native bf16 (no AVX512-BF16, no AMX); "
                                           "an emulated bf16 peak is no ceiling"}
    return {
        "val_bpb": summary.get("val_bpb"), "val_loss": summary["val_loss"],
        "unigram_loss": summary.get("unigram_loss"), "tokens_per_second": summary["tokens_per_second"],
        "precision": summary["precision"], "precision_reason": summary.get("precision_reason"),
        "mfu": mfu, "mfu_peak_dtype": summary.get("mfu_peak_dtype"), "mfu_valid": mfu <= 1.0,
        "matmul_peak_flops": summary["matmul_peak_flops"], "flops_per_token": summary["flops_per_token"],
        "bf16_mfu": bf16_mfu, "parameters": summary["parameters"], "steps": summary["steps"],
        "budget": summary.get("budget"), "train_seconds": summary["train_seconds"],
        "wall_seconds_in_trainer": summary["wall_seconds"], "whole_command_seconds": command_seconds,
        "stopped_by": summary["stopped_by"], "peak_memory_bytes": summary["peak_memory_bytes"],
        "bf16_native": native,
        "nanogpt_loop": {"runs": loops, "tokens_per_second": loop_tps},
        "targets": {
            "val_bpb": {"target": target_bpb, "cpu": "native bf16" if native else "AVX2-only",
                        "met": summary.get("val_bpb") is not None and summary["val_bpb"] <= target_bpb},
            "whole_command_seconds": {"target": TARGET_COMMAND_SECONDS,
                                      "met": command_seconds <= TARGET_COMMAND_SECONDS},
            "vs_nanogpt_loop": {"target": TARGET_VS_NANOGPT, "value": ratio, "met": ratio >= TARGET_VS_NANOGPT},
            "mfu_at_most_1": {"target": 1.0, "met": mfu <= 1.0},
        },
    }


def plot(curve: list[dict], records: list[dict], unigram: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["elapsed"], r["loss"]) for r in records if r.get("split") == "train" and "loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if train:
        ax.plot(*zip(*train), color="lightsteelblue", label="training loss")
    ax.plot([c["train_seconds"] for c in curve], [c["val_loss"] for c in curve], marker="o", label="validation loss")
    if unigram is not None:
        ax.axhline(unigram, color="grey", linestyle="--", label="unigram baseline")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("scaletrain train: time to quality")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def readme_block(a: dict, stamp: dict) -> str:
    t, flags = a["targets"], stamp["cpu_flags"]
    have = ", ".join(k for k, v in flags.items() if v) or "none of AVX2, AVX512-BF16, AMX, VNNI"
    budget = a.get("budget") or {}
    bpb = a["val_bpb"]
    lines = [README_START,
             f"Measured {stamp['timestamp'][:10]} by `python benchmarks/main_job.py` on commit "
             f"`{(stamp['git_commit'] or 'unknown')[:10]}`{' (with uncommitted changes)' if stamp['git_dirty'] else ''}: "
             f"{stamp['cpu_model']} ({have}), torch {stamp['torch']}. `scaletrain train` exactly as `make demo` "
             "runs it, data already prepared; see [docs/performance.md](docs/performance.md).", "",
             "| | value | target | |", "|---|---|---|---|",
             f"| val_bpb (bits per byte of source text, whole validation split) | **{bpb:.3f}** | "
             f"≤ {t['val_bpb']['target']:.2f} ({t['val_bpb']['cpu']} CPU) | {verdict(t['val_bpb']['met'])} |",
             f"| whole command | {round(a['whole_command_seconds']) // 60} min {round(a['whole_command_seconds']) % 60:02d} s | "
             f"≤ 5 min 30 s | {verdict(t['whole_command_seconds']['met'])} |",
             f"| tokens/s (training steps) | {a['tokens_per_second']:,.0f} | | |",
             f"| ÷ a plain nanoGPT-style loop (fp32, same shape, tokens and batch), same run | "
             f"{t['vs_nanogpt_loop']['value']:.2f}× ({a['nanogpt_loop']['tokens_per_second']:,.0f} tokens/s) | "
             f"≥ {TARGET_VS_NANOGPT}× | {verdict(t['vs_nanogpt_loop']['met'])} |",
             f"| precision | {a['precision']}: {a['precision_reason']} | | |",
             f"| MFU | {a['mfu']:.2f} against the measured {a['mfu_peak_dtype']} matmul peak "
             f"({a['matmul_peak_flops'] / 1e9:.0f} GFLOP/s) | ≤ 1 | {verdict(t['mfu_at_most_1']['met'])} |",
             f"| steps | {a['steps']:,}" + (f" (fitted to the {budget.get('max_minutes'):g}-minute budget)" if budget else "")
             + f", {a['train_seconds']:.0f} s of training steps | | |",
             f"| val_loss (nats/token) | {a['val_loss']:.3f} (unigram baseline {a['unigram_loss']:.3f}) | | |",
             f"| parameters | {a['parameters'] / 1e6:.2f} M | | |",
             README_END]
    return "\n".join(lines)


def measured(stamp: dict, command: str) -> str:
    return (f"Measured {stamp['timestamp']} by `{command}` on commit `{(stamp['git_commit'] or 'unknown')[:10]}`, "
            f"{stamp['cpu_model']}")


def perf_section(a: dict, curve: list[dict], stamp: dict, command: str) -> str:
    t = a["targets"]
    loops = " / ".join(f"{r['tokens_per_second']:,.0f}" for r in a["nanogpt_loop"]["runs"])
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in stamp["cpu_flags"].items())
    lines = [START, "## Main job: time to quality, and a plain loop beside it", "",
             f"{measured(stamp, command)}, CPU flags {flags}, "
             f"torch {stamp['torch']}. `scaletrain train` as `make demo` runs it (the `gpt` preset, automatic "
             "precision, schedule fitted to the five-minute budget), timed as a whole command with the data "
             "prepared. Before and after it, a plain nanoGPT-style loop "
             "([benchmarks/nanogpt_loop.py](../benchmarks/nanogpt_loop.py): fp32, learned positions, fused AdamW, "
             "the same shape, tokens and batch) trains for a fixed time.", "",
             "| what | measured | target | |", "|---|---|---|---|",
             f"| val_bpb | {a['val_bpb']:.3f} | ≤ {t['val_bpb']['target']:.2f} ({t['val_bpb']['cpu']}) | "
             f"{verdict(t['val_bpb']['met'])} |",
             f"| whole command | {a['whole_command_seconds']:.0f} s | ≤ {TARGET_COMMAND_SECONDS:.0f} s | "
             f"{verdict(t['whole_command_seconds']['met'])} |",
             f"| tokens/s ÷ the plain loop's | {t['vs_nanogpt_loop']['value']:.2f} ({a['tokens_per_second']:,.0f} ÷ "
             f"{a['nanogpt_loop']['tokens_per_second']:,.0f}; loop runs "
             f"{loops}) | ≥ {TARGET_VS_NANOGPT} | "
             f"{verdict(t['vs_nanogpt_loop']['met'])} |",
             f"| MFU ({a['mfu_peak_dtype']} peak, {a['matmul_peak_flops'] / 1e9:.0f} GFLOP/s measured) | "
             f"{a['mfu']:.2f} | ≤ 1 | {verdict(t['mfu_at_most_1']['met'])} |",
             f"| bf16 MFU | {a['bf16_mfu']['value']:.2f} |  | |" if a["bf16_mfu"]["value"] is not None
             else f"| bf16 MFU | {a['bf16_mfu']['note']} | | |",
             "", f"Precision: **{a['precision']}** ({a['precision_reason']}).", ""]
    budget = a.get("budget")
    if budget:
        fits = "; ".join(f"at step {f['step']}: {f['total']:,} steps ({1e3 * f['step_seconds']:.0f} ms a step)"
                         for f in budget["fits"])
        lines += [f"Time budget: train.max_minutes={budget['max_minutes']:g}; fitted {fits}; trained "
                  f"{a['steps']:,} steps ({a['stopped_by']}); the final evaluation of the whole validation split "
                  f"took {budget.get('final_eval_seconds', 0):.0f} s.", ""]
    lines += ["![time to quality](time_to_quality.png)", "",
              "| step | training time (s) | val loss | val bits/byte |", "|---:|---:|---:|---:|"]
    for c in curve:
        bpb = f"{c['val_bpb']:.3f}" if c.get("val_bpb") is not None else ""
        lines.append(f"| {c['step']} | {c['train_seconds']:.0f} | {c['val_loss']:.3f} | {bpb} |")
    lines.append(END)
    return "\n".join(lines)


def avx2_section(a: dict, stamp: dict, command: str) -> str:
    t, e = a["targets"], a["emulated"]
    limits = " ".join(f"{k}={v}" for k, v in e["limits"].items())
    lines = [AVX2_START, "## Main job with the kernels limited to AVX2 (an emulated AVX2-only CPU)", "",
             f"{measured(stamp, command)}, torch {stamp['torch']}: the same runs as above with `{limits}` in their "
             f"environment (torch's dispatch level in them: {e['cpu_capability']}). bf16 is emulated then, as on "
             "an AVX2-only CPU; the clock, caches and memory stay this CPU's, so this stands in for an AVX2-only "
             "machine, it is not one.", "",
             "| what | measured | target | |", "|---|---|---|---|",
             f"| val_bpb | {a['val_bpb']:.3f} | ≤ {t['val_bpb']['target']:.2f} (AVX2-only) | "
             f"{verdict(t['val_bpb']['met'])} (emulated) |",
             f"| whole command | {a['whole_command_seconds']:.0f} s | ≤ {TARGET_COMMAND_SECONDS:.0f} s | "
             f"{verdict(t['whole_command_seconds']['met'])} (emulated) |",
             f"| tokens/s ÷ the plain loop's (same limits) | {t['vs_nanogpt_loop']['value']:.2f} "
             f"({a['tokens_per_second']:,.0f} ÷ {a['nanogpt_loop']['tokens_per_second']:,.0f}) | | |",
             f"| steps | {a['steps']:,}, {a['train_seconds']:.0f} s of training steps | | |",
             "", f"Precision: **{a['precision']}** ({a['precision_reason']}).", AVX2_END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=None,
                   help="train.max_minutes for the scaletrain run (default: the preset's; a smoke run: 0.2)")
    p.add_argument("--nanogpt-seconds", type=float, default=60.0, help="seconds per plain-loop run (default 60)")
    p.add_argument("--keep-run", type=Path, default=None,
                   help="move the trained run folder here (a new folder): benchmarks/compress.py's GPT source")
    p.add_argument("--render", action="store_true",
                   help="rewrite the README block and the docs section from docs/results/performance.json only")
    p.add_argument("--emulate-avx2", action="store_true",
                   help="limit both runs' kernels to AVX2 (the AVX2-only target on a CPU with more); "
                        "writes its own key and section, not the README block")
    a = p.parse_args(argv)
    command = " ".join(["python benchmarks/main_job.py", *(sys.argv[1:] if argv is None else argv)])

    from docs_out import merge_results, write_section
    if a.render:  # the last measurement, written again (its own stamp: commit, time, CPU flags)
        data = json.loads((ROOT / "docs" / "results" / "performance.json").read_text())
        result, curve, stamp = data["main_job"], data["time_to_quality"], data["provenance"]["main_job"]
        write_section(ROOT / "docs" / "performance.md", START, END, perf_section(result, curve, stamp, stamp["script"]))
        write_section(ROOT / "README.md", README_START, README_END, readme_block(result, stamp))
        if "main_job_avx2_emulated" in data:
            avx2, stamp = data["main_job_avx2_emulated"], data["provenance"]["main_job_avx2_emulated"]
            write_section(ROOT / "docs" / "performance.md", AVX2_START, AVX2_END,
                          avx2_section(avx2, stamp, stamp["script"]), after=END)
        return 0
    from nanogpt_loop import preset_shape
    from scaletrain.provenance import stamp as make_stamp

    if a.keep_run is not None and a.keep_run.exists():  # refused before an hour of measuring, not after
        p.error(f"--keep-run: {a.keep_run} exists; give a new folder")
    if a.keep_run is not None and a.emulate_avx2:
        p.error("--keep-run keeps the native run (compress.py's source): not with --emulate-avx2")
    limits = AVX2_LIMITS if a.emulate_avx2 else None
    preset_shape()  # prepares the preset's data (once), so that the timed command finds it ready
    emulated = emulation_check(limits) if limits else None
    if emulated:
        print(f"with the limits: {emulated['cpu_capability']}, precision auto -> {emulated['precision_auto']} "
              f"({emulated['precision_reason']})", flush=True)
    work = Path(tempfile.mkdtemp(prefix="scaletrain-mainjob-"))
    loops = [nanogpt(a.nanogpt_seconds, limits)]
    print(f"nanoGPT loop: {loops[-1]['tokens_per_second']:,.0f} tokens/s", flush=True)
    summary, records, seconds, _ = scaletrain_train(work / "run", a.minutes, limits)
    print(f"scaletrain train: val_bpb {summary.get('val_bpb'):.3f}, {summary['tokens_per_second']:,.0f} tokens/s, "
          f"{seconds:.0f} s ({summary['precision']})", flush=True)
    loops.append(nanogpt(a.nanogpt_seconds, limits))
    print(f"nanoGPT loop: {loops[-1]['tokens_per_second']:,.0f} tokens/s", flush=True)

    stamp = make_stamp(command)
    if a.emulate_avx2:  # judged as an AVX2-only CPU: no AVX512-BF16, no AMX in its kernels
        result = assess(summary, seconds, loops, {**stamp["cpu_flags"], "AVX512-BF16": False, "AMX": False})
        result["emulated"] = emulated
        merge_results(ROOT / "docs" / "results" / "performance.json", {"main_job_avx2_emulated": result},
                      script=command)
        write_section(ROOT / "docs" / "performance.md", AVX2_START, AVX2_END, avx2_section(result, stamp, command),
                      after=END)
        print(avx2_section(result, stamp, command))
        return 0
    result = assess(summary, seconds, loops, stamp["cpu_flags"])
    curve = curve_of(summary, records)
    result["time_to_quality"] = curve
    plot(curve, records, summary.get("unigram_loss"), ROOT / "docs" / "time_to_quality.png")
    merge_results(ROOT / "docs" / "results" / "performance.json",
                  {"main_job": result, "tokens_per_second": result["tokens_per_second"], "time_to_quality": curve},
                  script=command, remove=STALE_KEYS)
    write_section(ROOT / "docs" / "performance.md", START, END, perf_section(result, curve, stamp, command))
    block = readme_block(result, stamp)
    write_section(ROOT / "README.md", README_START, README_END, block)
    print(block)
    if a.keep_run is not None:
        import shutil

        a.keep_run.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(work / "run"), str(a.keep_run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
