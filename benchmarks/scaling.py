"""Scaling and memory of the parallel layouts on this machine, side by side in one run.

Scaling: the GPT preset (4 heads, so that tensor parallel can split them) trains the same number of
steps on the same global batch as one process and as 2 ranks of ddp, zero1, fsdp and tp; the table
shows tokens/s of each against one process, the communication volume per step computed from the
model's sizes, and what that volume costs at the all-reduce bandwidth gloo measured here.

Memory: a scaled-up GPT trains a few steps under each layout, with and without activation
checkpointing; the table shows per-rank model state (parameters + gradients + optimizer state,
measured from the tensors) and the process's peak resident memory. A per-process budget shows
which layouts fit.

    python benchmarks/scaling.py            # writes docs/performance.md (scaling section) and
                                            # docs/results/performance.json (scaling, scaling_memory)
    python benchmarks/scaling.py --quick    # a smoke run, writes nothing
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
START, END = "<!-- scaling:start -->", "<!-- scaling:end -->"
QUIET = ["log.progress=false", "log.sample_tokens=0", "log.tensorboard=false", "train.eval_every=0",
         "train.checkpoint_every=0", "train.final_eval_batches=1", "train.precision=fp32",
         "model.n_head=4", "schedule.warmup_steps=0", "schedule.budget=steps"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def train(run_dir: Path, *overrides: str) -> dict:
    cmd = [sys.executable, "-m", "scaletrain", "train", "gpt", *QUIET, f"train.run_dir={run_dir}", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return json.loads((run_dir / "summary.json").read_text())


def gloo_allreduce_bandwidth(megabytes: int = 64) -> float:
    """Bus bandwidth (bytes/s) of an fp32 all-reduce between 2 local gloo ranks."""
    script = f"""
import time, torch, torch.distributed as dist
dist.init_process_group("gloo")
x = torch.ones({megabytes} * 2**20 // 4)
dist.all_reduce(x)
times = []
for _ in range(5):
    dist.barrier(); t = time.perf_counter(); dist.all_reduce(x); times.append(time.perf_counter() - t)
if dist.get_rank() == 0:
    print(sorted(times)[2])
dist.destroy_process_group()
"""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(script)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          fh.name], capture_output=True, text=True, env=ENV, timeout=600)
    seconds = float(out.stdout.strip().splitlines()[-1])
    # ring all-reduce moves 2 (n-1)/n of the buffer through each rank: the usual "bus" figure
    return 2 * 0.5 * megabytes * 2**20 / seconds


def comm_bytes_per_step(strategy: str, params: int, args: dict, batch_per_rank: int, n: int = 2) -> float:
    """Bytes each rank sends per optimizer step (fp32, ring collectives)."""
    p = 4 * params
    share = (n - 1) / n
    if strategy == "ddp":
        return 2 * share * p  # all-reduce of gradients
    if strategy == "zero1":
        return 2 * share * p + share * p  # all-reduce of gradients + broadcast of updated shards
    if strategy == "fsdp":
        return 3 * share * p  # all-gather (forward) + all-gather (backward) + reduce-scatter
    if strategy == "tp":  # 2 all-reduces of activations per block, forward and backward
        act = 4 * batch_per_rank * args["seq_len"] * args["d_model"]
        return 4 * args["n_layer"] * 2 * share * act
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=40)
    a = ap.parse_args()
    steps = 4 if a.quick else a.steps
    work = Path(tempfile.mkdtemp(prefix="scaletrain-scaling-"))
    common = [f"train.max_steps={steps}", "optim.name=adamw"]
    runs = {}
    started = time.time()
    runs["single (1 thread)"] = train(work / "single1", *common, "train.batch_size=8", "train.threads=1")
    runs["single (2 threads)"] = train(work / "single2", *common, "train.batch_size=8", "train.threads=2")
    for strategy in ("ddp", "zero1", "fsdp", "tp"):
        batch = 8 if strategy == "tp" else 4  # tp ranks read the same batch: global batch 8 for all
        runs[strategy] = train(work / strategy, *common, f"train.batch_size={batch}", "train.threads=1",
                               f"parallel.strategy={strategy}", "parallel.nproc=2")
    bandwidth = gloo_allreduce_bandwidth(8 if a.quick else 64)
    args = json.loads((work / "ddp" / "model_config.json").read_text())["args"]
    base = runs["single (2 threads)"]["tokens_per_second"]
    scaling = {}
    for name, summary in runs.items():
        strategy = name.split()[0]
        batch_per_rank = 8 if strategy in ("single", "tp") else 4
        volume = comm_bytes_per_step(strategy, summary["parameters"], args, batch_per_rank)
        steps_per_s = summary["tokens_per_second"] / (8 * args["seq_len"])
        scaling[name] = {
            "tokens_per_second": summary["tokens_per_second"],
            "vs_single_2_threads": summary["tokens_per_second"] / base,
            "comm_bytes_per_step": volume,
            "comm_seconds_at_gloo_bandwidth": volume / bandwidth,
            "step_seconds": 1 / steps_per_s,
            "model_state_bytes_per_rank": summary.get("model_state_bytes_per_rank"),
        }

    memory = {}
    big = ["model.d_model=512", "model.n_layer=8", "model.n_head=8", "train.max_steps=3", "train.threads=1",
           "optim.name=adamw"]
    for strategy in ("single", "ddp", "zero1", "fsdp"):
        for ac in (False, True):
            extra = [f"parallel.activation_checkpointing={str(ac).lower()}"]
            extra += ["train.batch_size=8"] if strategy == "single" else \
                [f"parallel.strategy={strategy}", "parallel.nproc=2", "train.batch_size=4"]
            summary = train(work / f"mem-{strategy}-{ac}", *QUIET[:0], *big, *extra)
            memory[f"{strategy}{' + AC' if ac else ''}"] = {
                "model_state_bytes_per_rank": summary["model_state_bytes_per_rank"],
                "peak_memory_bytes_rank0": summary["peak_memory_bytes"],
                "parameters": summary["parameters"],
            }
    elapsed = time.time() - started
    if a.quick:
        print(json.dumps({"scaling": scaling, "memory": memory, "gloo_bus_bandwidth": bandwidth}, indent=1))
        return 0
    write(scaling, memory, bandwidth, elapsed)
    return 0


def write(scaling: dict, memory: dict, bandwidth: float, elapsed: float) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from docs_out import merge_results, write_section
    from scaletrain.hardware import machine_info

    info = machine_info()
    merge_results(ROOT / "docs" / "results" / "performance.json", {
        "scaling": {k: v["vs_single_2_threads"] for k, v in scaling.items()},
        "scaling_detail": scaling,
        "scaling_memory": memory,  # "memory" is benchmarks/memory.py's (the model that needs fsdp)
        "gloo_bus_bandwidth_bytes_per_second": bandwidth,
        "scaling_machine": {**info, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}})

    lines = [START, "## Scaling and memory of the parallel layouts", "",
             f"Measured {time.strftime('%Y-%m-%d')} by `python benchmarks/scaling.py` ({elapsed / 60:.0f} min) on "
             f"{info.get('cpu', 'this CPU')}, torch {torch.__version__}, gloo; 2 ranks share this machine's 2 cores "
             "(1 thread each). The GPT preset with 4 heads, global batch 8 × 256 tokens, AdamW, fp32. "
             f"gloo all-reduce bus bandwidth measured here: {bandwidth / 2**30:.2f} GiB/s.", "",
             "| layout | tokens/s | vs one process (2 threads) | comm. per step (computed) | at gloo bandwidth | step time |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in scaling.items():
        lines.append(f"| {name} | {r['tokens_per_second']:,.0f} | {r['vs_single_2_threads']:.2f}× | "
                     f"{r['comm_bytes_per_step'] / 2**20:.1f} MiB | {r['comm_seconds_at_gloo_bandwidth'] * 1e3:.1f} ms | "
                     f"{r['step_seconds'] * 1e3:.0f} ms |")
    lines += ["", "Two ranks on two cores cannot beat one process using both cores: the same arithmetic is "
              "split, and the collectives come on top. The column to read is how close each layout stays; "
              "on several machines or GPUs the same layouts add devices instead of splitting them.", "",
              "Memory, a scaled-up GPT (d_model 512, 8 layers, 8 heads), batch 8 per step:", "",
              "| layout | parameters | model state per rank | peak RSS of rank 0 |",
              "|---|---:|---:|---:|"]
    for name, m in memory.items():
        state = max(m["model_state_bytes_per_rank"] or [0])
        lines.append(f"| {name} | {m['parameters']:,} | {state / 2**20:.0f} MiB | "
                     f"{m['peak_memory_bytes_rank0'] / 2**20:.0f} MiB |")
    lines += ["", "Model state is measured from the tensors after the first step (parameters, gradients, "
              "optimizer state; local shards only). Peak RSS includes the Python and torch runtime, which "
              "dominates at this size; whether a larger model fits a per-process budget under each layout, "
              "with and without activation checkpointing, is measured in the memory section below "
              "(`benchmarks/memory.py`).", END]
    write_section(ROOT / "docs" / "performance.md", START, END, "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
