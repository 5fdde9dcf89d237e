"""The issues' targets against what the other benchmarks measured: the summary at the top of
docs/performance.md, rebuilt from docs/results/performance.json and docs/results/compress.json (no
measuring of its own). Every verdict is computed from the figures: "met" only where the measured
value reaches the target, "not measured" where no figure exists, "not applicable" (with why) where
the target does not apply to the CPU the figure was measured on.

`make bench` runs it last, so the table always shows the figures of the sections below it.

    python benchmarks/summary.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
START, END = "<!-- summary:start -->", "<!-- summary:end -->"
INT8 = ("int8-dynamic", "int8-weight", "onnx-int8", "onnx-int8-static")
SCALING_LAYOUTS = ("ddp", "zero1", "fsdp", "tp")


def verdict(ok: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[ok]


def _commit(d: dict, key: str) -> str:
    """` (commit abc1234, date)` of the run that measured `key`, where recorded."""
    stamp = (d.get("provenance") or {}).get(key) or {}
    commit, when = stamp.get("git_commit"), stamp.get("timestamp")
    if not commit:
        return ""
    return f" (commit `{commit[:7]}`, {when[:10] if when else '?'})"


def overhead_rows(d: dict) -> list[tuple[str, str, str, str]]:
    out = []
    over = d.get("overhead_ratio", {})
    for model, label in (("gpt", "GPT"), ("mlp", "MLP")):
        r = over.get(model, {}).get("fp32")
        value = (r.get("interleaved") or r.get("separate_runs")) if r else None
        if value is None:
            out.append((f"overhead, {label} preset (trainer ÷ hand loop)", "≥ 0.99", "–", verdict(None)))
            continue
        off = over.get(model, {}).get("fp32, guard off", {}).get("interleaved")
        out.append((f"overhead, {label} preset (trainer ÷ hand loop)", "≥ 0.99",
                    f"{value:.3f}" + (f" ({off:.3f} with `guard.action=off`)" if off else "")
                    + _commit(d, "overhead_ratio"), verdict(value >= 0.99)))
    return out


def main_job_rows(d: dict) -> list[tuple[str, str, str, str]]:
    m = d.get("main_job")
    if not m:
        return [("main job: val_bpb in ≤ 5 min of training", "≤ 1.70 (native bf16) / ≤ 1.80 (AVX2)", "–",
                 verdict(None))]
    t, c = m["targets"], _commit(d, "main_job")
    bpb = t["val_bpb"]
    rows = [(f"main job: val_bpb after ≤ 5 min of training, {bpb['cpu']} CPU", f"≤ {bpb['target']:.2f}",
             f"{m['val_bpb']:.3f} ({m['precision']}, {m['steps']:,} steps){c}", verdict(bpb["met"])),
            ("main job: whole command, data prepared", "≤ 330 s", f"{m['whole_command_seconds']:.0f} s{c}",
             verdict(t["whole_command_seconds"]["met"])),
            ("main job tokens/s ÷ a plain nanoGPT-style loop, same run", "≥ 1.5",
             f"{t['vs_nanogpt_loop']['value']:.2f} ({m['tokens_per_second']:,.0f} ÷ "
             f"{m['nanogpt_loop']['tokens_per_second']:,.0f}){c}", verdict(t["vs_nanogpt_loop"]["met"])),
            (f"main job MFU against the {m['mfu_peak_dtype']} matmul peak", "≤ 1 (a utilization)",
             f"{m['mfu']:.2f}{c}", verdict(m["mfu"] <= 1.0))]
    e = d.get("main_job_avx2_emulated")
    if e and m.get("bf16_native"):  # the AVX2-only target, on a CPU that has more: emulated
        ce = _commit(d, "main_job_avx2_emulated")
        rows.insert(1, ("main job: val_bpb after ≤ 5 min of training, AVX2-only CPU (emulated: kernels "
                        "limited to AVX2 on this CPU)", f"≤ {e['targets']['val_bpb']['target']:.2f}",
                        f"{e['val_bpb']:.3f} ({e['precision']}, {e['steps']:,} steps){ce}",
                        verdict(e["targets"]["val_bpb"]["met"]) + " (emulated)"))
    bf16 = m["bf16_mfu"]
    if bf16["value"] is not None:
        rows.append(("MFU against the bf16 matmul peak", "≥ 0.50", f"{bf16['value']:.2f}{c}",
                     "**invalid: above 1** (the peak was measured low)" if bf16["value"] > 1.0
                     else verdict(bf16["value"] >= 0.5)))
    else:
        rows.append(("MFU against the bf16 matmul peak", "≥ 0.50", bf16["note"], "not applicable on this CPU"))
    return rows


def scaling_row(d: dict) -> tuple[str, str, str, str]:
    detail = d.get("scaling_detail") or {}
    if not detail:
        return ("scaling on 2 ranks vs one 2-thread process", "every layout measured, with its communication",
                "–", verdict(None))
    parts = ", ".join(f"{k} {v['vs_single_2_threads']:.2f}x" for k, v in detail.items() if not k.startswith("single"))
    complete = all(k in detail and detail[k].get("tokens_per_second") and "comm_bytes_per_step" in detail[k]
                   for k in SCALING_LAYOUTS)
    return ("scaling on 2 ranks vs one 2-thread process", "every layout measured, with its communication",
            parts + _commit(d, "scaling_detail"), verdict(complete))


def memory_row(d: dict) -> tuple[str, str, str, str] | None:
    mem = d.get("memory")
    if not mem:
        return None
    budget = mem["budget_bytes"] / 2**30
    fits = [k for k, v in mem["layouts"].items() if v["fits_budget"]]
    misses = [k for k, v in mem["layouts"].items() if not v["fits_budget"]]
    return (f"memory: a model over a {budget:.1f} GiB budget fits with fsdp/AC", "shown fitting with them",
            f"fits: {', '.join(fits)}; over: {', '.join(misses)}" + _commit(d, "memory"),
            verdict(bool(fits and misses)))


def compress_rows(c: dict) -> list[tuple[str, str, str, str]]:
    """int8 GPT: the best int8 method on each target, and whether one method meets all three."""
    gpt = {k: v for k, v in (c.get("presets", {}).get("gpt") or {}).items() if k in INT8}
    if not gpt:
        return [("int8 GPT: size, speed at batch 64, perplexity", "≤ 0.26, ≥ 2×, ≤ +3 %", "–", verdict(None))]
    flags = c.get("cpu_flags") or {}
    where = ", ".join(k for k, v in flags.items() if v) or "flags not recorded"
    commit = f" (commit `{c['git_commit'][:7]}`, {where})" if c.get("git_commit") else ""

    def ppl(r):
        return r["quality_after"] / r["quality_before"] - 1

    rows = []
    for name, target, key, ok, fmt in (
            ("int8 GPT: size ratio", "≤ 0.26", lambda r: r["size_ratio"], lambda v: v <= 0.26, "{:.3f}"),
            ("int8 GPT: speedup at batch 64", "≥ 2×", lambda r: -r["speedup_b64"], lambda v: -v >= 2.0, "{:.2f}×"),
            ("int8 GPT: perplexity change", "≤ +3 %", ppl, lambda v: v <= 0.03, "{:+.1%}")):
        best = min(gpt, key=lambda m: key(gpt[m]))
        value = key(gpt[best])
        shown = fmt.format(-value if name.endswith("batch 64") else value)
        rows.append((name, target, f"{shown} ({best}){commit}", verdict(ok(value))))
    all_three = [m for m, r in gpt.items() if r["size_ratio"] <= 0.26 and r["speedup_b64"] >= 2.0 and ppl(r) <= 0.03]
    rows.append(("int8 GPT: one method meets all three", "size, speed and perplexity together",
                 (", ".join(all_three) if all_three else "none") + commit, verdict(bool(all_three))))
    return rows


def rows(d: dict, compress: dict | None = None) -> list[tuple[str, str, str, str]]:
    out = overhead_rows(d) + main_job_rows(d)
    acct = d.get("mfu_account", {})
    if acct.get("mfu_unprofiled") is not None:
        out.append(("MFU account of the preset's fp32 step", "every point of the gap explained",
                    f"{acct['mfu_unprofiled']:.2f} of the fp32 peak" + _commit(d, "mfu_account"), "see the MFU account"))
    out.append(scaling_row(d))
    mem = memory_row(d)
    if mem:
        out.append(mem)
    out += compress_rows(compress or {})
    gpu = d.get("gpu_mfu")
    out.append(("GPU MFU, GPT-2 small, bf16 + compile", "≥ 0.45 on H100/H200",
                f"{gpu:.3f} on {d.get('gpu')}" if gpu is not None else "no GPU was lent",
                verdict(gpu >= 0.45) if gpu is not None else "not measured"))
    return out


def section(d: dict, compress: dict | None = None) -> str:
    lines = [START, "## Summary: the targets", "",
             "Rebuilt by `python benchmarks/summary.py` from [results/performance.json](results/performance.json) "
             "and [results/compress.json](results/compress.json); every verdict is computed from the figure beside "
             "it, and each figure's section below (or compression.md) has the command, machine, commit and date.", "",
             "| what | target | measured | |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {v} |" for a, b, c, v in rows(d, compress)]
    lines += ["", END]
    return "\n".join(lines) + "\n"


def main() -> int:
    from docs_out import write_section

    d = json.loads((ROOT / "docs" / "results" / "performance.json").read_text())
    compress_path = ROOT / "docs" / "results" / "compress.json"
    compress = json.loads(compress_path.read_text()) if compress_path.is_file() else None
    new = section(d, compress)
    write_section(ROOT / "docs" / "performance.md", START, END, new, top=True)  # under the title
    print(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
