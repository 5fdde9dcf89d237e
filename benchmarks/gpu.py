"""GPU throughput and MFU of a GPT-2-small-sized model (124M parameters) on one GPU.

bf16 autocast, torch.compile, fused AdamW, SDPA attention — the setup a practitioner would use.
It times `--steps` optimizer steps after a warm-up (compilation excluded), and reports tokens/s and
MFU against the GPU's dense bf16 peak (a table of known devices; `--peak-tflops` overrides).
Writes its figures to `docs/results/performance.json` (`gpu_mfu`, `gpu_tokens_per_second`, `gpu`)
and its section of docs/performance.md when `--write` is given. Needs CUDA; on a machine without one it says so and exits 2.

    python benchmarks/gpu.py --steps 30 --write
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scaletrain.models.gpt import GPT, GPTArgs  # noqa: E402
from scaletrain.optim.registry import build_optimizer  # noqa: E402
from scaletrain.optim.param_groups import param_groups  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) from the vendors' data sheets.
PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def peak_for(name: str) -> float | None:
    for key, value in PEAKS.items():
        if key in name:
            return value
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("error: benchmarks/gpu.py needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cuda")
    name = torch.cuda.get_device_name()
    peak = a.peak_tflops * 1e12 if a.peak_tflops else peak_for(name)
    torch.manual_seed(0)
    args = GPTArgs(vocab_size=50304, seq_len=a.seq_len, n_layer=12, n_head=12, d_model=768)
    model = GPT(args).to(device)
    optimizer = build_optimizer("adamw", param_groups(model, 0.1, {}), lr=6e-4, weight_decay=0.1, fused=True)
    step_model = torch.compile(model) if not a.no_compile else model
    x = torch.randint(0, args.vocab_size, (a.batch, a.seq_len), device=device)
    y = torch.randint(0, args.vocab_size, (a.batch, a.seq_len), device=device)

    def step() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(step_model(x).flatten(0, 1).float(), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(5):  # compile and warm up
        step()
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    tokens_per_second = a.steps * a.batch * a.seq_len / seconds
    flops = model.flops_per_token() * tokens_per_second
    result = {"gpu": name, "gpu_tokens_per_second": tokens_per_second, "gpu_flops_per_second": flops,
              "gpu_mfu": flops / peak if peak else None, "gpu_peak_flops": peak,
              "gpu_parameters": model.num_params(), "gpu_batch": [a.batch, a.seq_len],
              "gpu_compile": not a.no_compile, "gpu_final_loss": float(loss),
              "gpu_peak_memory_bytes": torch.cuda.max_memory_allocated(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(result, indent=1))
    if a.write:
        from docs_out import merge_results

        merge_results(ROOT / "docs" / "results" / "performance.json", result)
        write_gpu_section(result, a)
    return 0


START, END = "<!-- gpu:start -->", "<!-- gpu:end -->"


def write_gpu_section(r: dict, a: argparse.Namespace) -> None:
    from docs_out import write_section

    mfu = f"**{r['gpu_mfu']:.3f}**" if r["gpu_mfu"] is not None else "– (unknown peak: pass --peak-tflops)"
    lines = [START, "## GPU: GPT-2 small on one GPU", "",
             f"Measured {r['date']} by `python benchmarks/gpu.py --steps {a.steps} --write` on one "
             f"{r['gpu']}, torch {r['torch']}: {r['gpu_parameters'] / 1e6:.0f} M parameters, batch "
             f"{r['gpu_batch'][0]} × {r['gpu_batch'][1]} tokens, bf16 autocast, "
             f"{'torch.compile' if r['gpu_compile'] else 'eager'}, fused AdamW, SDPA, {a.steps} timed steps "
             "after 5 warm-up steps (compilation excluded).", "",
             "| tokens/s | model FLOP/s | dense bf16 peak | MFU | peak memory |", "|---:|---:|---:|---:|---:|",
             f"| {r['gpu_tokens_per_second']:,.0f} | {r['gpu_flops_per_second'] / 1e12:.0f} T | "
             + (f"{r['gpu_peak_flops'] / 1e12:.0f} T" if r["gpu_peak_flops"] else "–")
             + f" | {mfu} | {r['gpu_peak_memory_bytes'] / 2**30:.1f} GiB |", "",
             "Target (issue 9): MFU ≥ 0.45 on an H100/H200-class GPU.", END]
    write_section(ROOT / "docs" / "performance.md", START, END, "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
