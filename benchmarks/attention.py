"""Attention on the CPU in bf16: SDPA's flash kernel against the written-out form that
`scaletrain.models.attention.causal_attention` uses there (up to EXPLICIT_MAX_T tokens).

Two measurements, both sides alternating in rounds (the median of the per-round ratios):
1. One attention call, forward + backward, bf16, at several sequence lengths (the main job's
   shape first), with torch's threads = the machine's cores.
2. The `gpt` preset's whole bf16 training step (its model and batch, fused AdamW, the loss in
   fp32), with causal_attention written out (what training runs) and with SDPA forced.

Where the CPU has no native bf16 (AVX2 only) `train.precision=auto` picks fp32 and neither path
is used by default; the figures are still measured and the table says so.

    python benchmarks/attention.py            # writes docs/performance.md + docs/results/attention.json
    python benchmarks/attention.py --quick    # a smoke run: one round, fewer steps, writes nothing
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

import scaletrain.models.attention as attention
from docs_out import write_results, write_section
from scaletrain.config.load import load_config
from scaletrain.hardware import choose_precision, machine_info
from scaletrain.diagnose.plan import data_shape
from scaletrain.models import build_model, get_family

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- attention:start -->", "<!-- attention:end -->"
# (batch, heads, T, head_dim): the main job's shape, then longer sequences at a similar token count.
SHAPES = ((4, 3, 128, 64), (4, 3, 256, 64), (2, 6, 512, 64), (1, 12, 1024, 64))


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def time_call(fn, shape, calls: int) -> float:
    """ms per forward + backward of fn(q, k, v) on bf16 inputs of `shape`."""
    q, k, v = (torch.randn(shape, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape, dtype=torch.bfloat16)
    for _ in range(3):
        fn(q, k, v).backward(grad)
    began = time.perf_counter()
    for _ in range(calls):
        fn(q, k, v).backward(grad)
    return 1e3 * (time.perf_counter() - began) / calls


def kernel_rows(rounds: int, scale: float) -> list[dict]:
    rows = []
    for B, H, T, hd in SHAPES:
        shape = (B, H, T, hd)
        calls = max(3, int(scale * 3e8 / (B * H * T * T * hd / 64)))
        flash, explicit = [], []
        for r in range(rounds):
            for side in (("flash", "explicit") if r % 2 == 0 else ("explicit", "flash")):
                if side == "flash":
                    flash.append(time_call(sdpa, shape, calls))
                else:
                    explicit.append(time_call(attention._explicit_causal, shape, calls))
        ratios = [f / e for f, e in zip(flash, explicit)]
        rows.append({"batch": B, "heads": H, "seq_len": T, "head_dim": hd, "calls": calls,
                     "flash_ms": statistics.median(flash), "explicit_ms": statistics.median(explicit),
                     "speedup": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios),
                     "used_by_causal_attention": T <= attention.EXPLICIT_MAX_T})
        print(f"  B{B} H{H} T{T}: flash {rows[-1]['flash_ms']:.2f} ms, written out {rows[-1]['explicit_ms']:.2f} ms, "
              f"{rows[-1]['speedup']:.2f}x", flush=True)
    return rows


def preset_step(rounds: int, steps: int) -> dict:
    cfg = load_config("gpt", ["log.progress=false"])
    args = get_family("gpt").args_from_config(cfg.model, data_shape(cfg))  # as the trainer builds it
    torch.manual_seed(0)
    model = build_model("gpt", args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    B, T, V = cfg.train.batch_size, cfg.data.seq_len, cfg.data.vocab_size
    tokens = torch.randint(0, V, (B, T + 1), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(tokens[:, :-1])
        F.cross_entropy(logits.float().view(-1, V), tokens[:, 1:].reshape(-1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(max_t: int) -> float:
        attention.EXPLICIT_MAX_T = max_t  # 0: every call goes to SDPA
        for _ in range(3):
            step()
        began = time.perf_counter()
        for _ in range(steps):
            step()
        return 1e3 * (time.perf_counter() - began) / steps

    limit = attention.EXPLICIT_MAX_T
    flash, explicit = [], []
    try:
        for r in range(rounds):
            for side in (("flash", "explicit") if r % 2 == 0 else ("explicit", "flash")):
                (flash if side == "flash" else explicit).append(timed(0 if side == "flash" else limit))
    finally:
        attention.EXPLICIT_MAX_T = limit
    ratios = [f / e for f, e in zip(flash, explicit)]
    out = {"model": {k: args[k] for k in ("n_layer", "n_head", "d_model", "seq_len", "vocab_size")},
           "batch": B, "steps_per_round": steps, "rounds": rounds,
           "sdpa_ms_per_step": statistics.median(flash), "explicit_ms_per_step": statistics.median(explicit),
           "speedup": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios)}
    print(f"  gpt preset bf16 step: SDPA {out['sdpa_ms_per_step']:.1f} ms, written out "
          f"{out['explicit_ms_per_step']:.1f} ms, {out['speedup']:.2f}x", flush=True)
    return out


def section(report: dict) -> str:
    m, step = report["machine"], report["preset_step"]
    lines = [START, "## Attention on the CPU in bf16", "",
             "Forward + backward of one causal attention call in bf16: SDPA's flash kernel against the "
             "written-out form (q·kᵀ/√hd + causal bias, softmax, ·v) that `causal_attention` "
             f"(`scaletrain.models.attention`) runs for bf16 CPU tensors of up to {report['explicit_max_t']} "
             "tokens; median of rounds that alternate the order.", "",
             "| batch | heads | T | head dim | flash ms | written out ms | speedup (median) | min – max | used |",
             "|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in report["kernels"]:
        lines.append(f"| {r['batch']} | {r['heads']} | {r['seq_len']} | {r['head_dim']} | {r['flash_ms']:.2f} | "
                     f"{r['explicit_ms']:.2f} | **{r['speedup']:.2f}×** | {r['speedup_min']:.2f} – "
                     f"{r['speedup_max']:.2f} | {'written out' if r['used_by_causal_attention'] else 'SDPA'} |")
    mm = step["model"]
    lines += ["",
              f"- The `gpt` preset's whole bf16 training step ({mm['n_layer']} layers, {mm['n_head']} heads, "
              f"d_model {mm['d_model']}, T {mm['seq_len']}, batch {step['batch']}, fused AdamW): "
              f"{step['sdpa_ms_per_step']:.1f} ms with SDPA, {step['explicit_ms_per_step']:.1f} ms written out: "
              f"**{step['speedup']:.2f}×** (min – max over {step['rounds']} rounds of {step['steps_per_round']} "
              f"steps: {step['speedup_min']:.2f} – {step['speedup_max']:.2f}).",
              f"- Precision `auto` picks {report['auto_precision']} on this machine ({report['auto_reason']})"
              + ("." if report["auto_precision"] == "bf16" else ": neither path runs by default here."),
              "- The written-out form keeps the bf16 T×T probabilities for backward (batch × heads × T² × 2 "
              "bytes a layer; `scaletrain plan` counts them), so it stops where the flash kernel wins again.",
              f"- Command: `{report['command']}`; raw figures in [results/attention.json](results/attention.json).",
              f"- Machine: {m['cpu_model']}, {m['logical_cores']} logical cores, CPU flags "
              f"{', '.join(k for k, on in m['cpu_flags'].items() if on) or 'none of note'}; "
              f"torch {m['torch_version']}, {report['threads']} threads. Date: {report['date']}.",
              END]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, fewer calls, writes nothing")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rounds, scale, steps = (1, 0.1, 3) if args.quick else (args.rounds, 1.0, 20)
    auto, reason = choose_precision("auto", "cpu")
    print(f"attention: bf16 on {torch.get_num_threads()} threads; precision auto -> {auto} ({reason})", flush=True)
    report = {"command": " ".join(["python", "benchmarks/attention.py", *sys.argv[1:]]),
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_info(),
              "threads": torch.get_num_threads(), "explicit_max_t": attention.EXPLICIT_MAX_T,
              "auto_precision": auto, "auto_reason": reason,
              "kernels": kernel_rows(rounds, scale), "preset_step": preset_step(rounds, steps)}
    if args.quick:
        print(section(report))
        return
    write_results(ROOT / "docs" / "results" / "attention.json", report)
    write_section(ROOT / "docs" / "performance.md", START, END, section(report), after="<!-- overhead:end -->")
    print("wrote docs/performance.md and docs/results/attention.json")


if __name__ == "__main__":
    main()
