"""Peak memory per process of each layout, with and without activation checkpointing, for a GPT
too large for a per-process memory budget as one process: which layouts make it fit.

Each layout trains the same scaled-up GPT (the gpt preset at d_model 1024, 16 layers, 16 heads:
203 M parameters, so that the model state, 16 bytes per parameter with AdamW, dominates) for a few
AdamW steps on the same global batch through the real trainer
(`scaletrain train`, 2 ranks under torchrun for ddp and fsdp). Measured per rank: the model state
(parameters + gradients + optimizer state, from the tensors) and the process's peak resident memory
(ru_maxrss, which includes the Python/torch runtime and the final export). `scaletrain plan`'s
prediction for the same layout stands beside it. The budget is compared with the measured peaks; it
is not enforced on the processes (an address-space limit is not a resident-memory limit).

    python benchmarks/memory.py            # writes docs/performance.md (memory section) and
                                           # docs/results/performance.json (key "memory")
    python benchmarks/memory.py --quick    # a small model, 1 step: a smoke run that writes nothing
    python benchmarks/memory.py --rewrite  # the section again from the JSON (after editing the text)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- memory:start -->", "<!-- memory:end -->"
BUDGET_BYTES = int(3.5 * 2**30)  # per process: e.g. a container's limit, or one rank's share of a host
GLOBAL_BATCH = 4  # sequences of 256 tokens per optimizer step, the same for every layout
MODEL = ["model.d_model=1024", "model.n_layer=16", "model.n_head=16"]
QUICK_MODEL = ["model.d_model=128", "model.n_layer=2", "model.n_head=4"]
COMMON = ["log.progress=false", "log.sample_tokens=0", "log.tensorboard=false", "train.eval_every=0",
          "train.checkpoint_every=0", "train.final_eval_batches=1", "train.eval_batch_size=8",
          "train.precision=fp32", "schedule.warmup_steps=0", "schedule.budget=steps", "optim.name=adamw"]
# (name, strategy, ranks, activation checkpointing)
LAYOUTS = [("single", "single", 1, False), ("single + AC", "single", 1, True),
           ("ddp", "ddp", 2, False), ("ddp + AC", "ddp", 2, True),
           ("fsdp", "fsdp", 2, False), ("fsdp + AC", "fsdp", 2, True)]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def layout_overrides(strategy: str, ranks: int, ac: bool) -> list[str]:
    out = [f"train.batch_size={GLOBAL_BATCH // ranks}", f"parallel.activation_checkpointing={str(ac).lower()}"]
    if ranks > 1:  # one thread per rank: the 2 ranks share the 2 cores
        return out + [f"parallel.strategy={strategy}", f"parallel.nproc={ranks}", "train.threads=1"]
    return out + ["train.threads=2"]


def train(run_dir: Path, overrides: list[str]) -> tuple[dict, int]:
    """(summary.json, peak RSS of the largest process in the run's tree: launcher, agent, ranks)."""
    cmd = [sys.executable, "-m", "scaletrain", "train", "gpt", *overrides, f"train.run_dir={run_dir}"]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=ENV, cwd=ROOT)
        # wait4's rusage covers the child and every descendant it waited for; ru_maxrss is the
        # largest single process among them (KiB on Linux).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err.read()[-3000:]}")
    return json.loads((run_dir / "summary.json").read_text()), usage.ru_maxrss * 1024


def planned_peak(overrides: list[str], ranks: int, strategy: str, ac: bool) -> dict:
    """`scaletrain plan`'s figures for this exact layout (micro-batch = train.batch_size, no
    accumulation); the plan counts tensors, so its runtime constant is added for a process total."""
    sys.path.insert(0, str(ROOT / "src"))
    from scaletrain.config.load import load_config
    from scaletrain.diagnose import plan as planner

    cfg = load_config("gpt", overrides)
    p = planner.plan(cfg, world_size=ranks, device="cpu")
    match = [c for c in p.candidates if c.strategy == strategy and c.activation_checkpointing == ac
             and c.micro_batch == cfg.train.batch_size and c.grad_accum == 1 and not c.cpu_offload]
    if len(match) != 1:
        raise SystemExit(f"plan has {len(match)} candidates for {strategy} ac={ac}")
    m = match[0].memory
    return {"tensors_bytes": m["peak"], "runtime_bytes": planner.RUNTIME_BYTES["cpu"],
            "peak_bytes": m["peak"] + planner.RUNTIME_BYTES["cpu"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rewrite", action="store_true")
    a = ap.parse_args()
    if a.rewrite:
        saved = json.loads((ROOT / "docs" / "results" / "performance.json").read_text())["memory"]
        elapsed = saved.get("elapsed_seconds") or sum(r["wall_seconds"] for r in saved["layouts"].values())
        write(saved["layouts"], saved["model_overrides"], saved["steps"], elapsed, saved["machine"]["date"])
        return 0
    model = QUICK_MODEL if a.quick else MODEL
    steps = 1 if a.quick else a.steps
    work = Path(tempfile.mkdtemp(prefix="scaletrain-memory-"))
    rows = {}
    started = time.time()
    try:
        for name, strategy, ranks, ac in LAYOUTS:
            overrides = [*COMMON, *model, f"train.max_steps={steps}", *layout_overrides(strategy, ranks, ac)]
            t0 = time.time()
            summary, tree_peak = train(work / name.replace(" + ", "-"), overrides)
            per_rank = summary["peak_memory_bytes_per_rank"]
            rows[name] = {
                "strategy": strategy, "ranks": ranks, "activation_checkpointing": ac,
                "parameters": summary["parameters"],
                "model_state_bytes_per_rank": summary["model_state_bytes_per_rank"],
                "peak_rss_bytes_per_rank": per_rank,
                "peak_rss_bytes_max_rank": max(per_rank),
                "peak_rss_bytes_process_tree": tree_peak,
                "plan": planned_peak(overrides, ranks, strategy, ac),
                "fits_budget": max(per_rank) <= BUDGET_BYTES,
                "tokens_per_second": summary["tokens_per_second"],
                "wall_seconds": time.time() - t0,
            }
            print(f"{name}: peak {max(per_rank) / 2**30:.2f} GiB per rank (plan "
                  f"{rows[name]['plan']['peak_bytes'] / 2**30:.2f}), {time.time() - t0:.0f} s", flush=True)
            shutil.rmtree(work / name.replace(" + ", "-"), ignore_errors=True)  # ~3 GB of checkpoint
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.time() - started
    if a.quick:
        print(json.dumps(rows, indent=1))
        return 0
    write(rows, model, steps, elapsed)
    return 0


def _gib(x: float) -> str:
    return f"{x / 2**30:.2f} GiB"


def write(rows: dict, model: list[str], steps: int, elapsed: float, date: str | None = None) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from docs_out import merge_results, write_section
    from scaletrain.hardware import machine_info

    info = machine_info()
    date = date or time.strftime("%Y-%m-%d")
    merge_results(ROOT / "docs" / "results" / "performance.json", {"memory": {"budget_bytes": BUDGET_BYTES, "model_overrides": model, "global_batch": GLOBAL_BATCH,
                         "seq_len": 256, "steps": steps, "layouts": rows, "elapsed_seconds": elapsed,
                         "machine": {**info, "date": date, "torch": torch.__version__}}})

    params = next(iter(rows.values()))["parameters"]
    lines = [START, "## Memory: peak per process of each layout against a budget", "",
             f"Measured {date} by `python benchmarks/memory.py` ({elapsed / 60:.0f} min) on "
             f"{info.get('cpu', 'this CPU')}, torch {torch.__version__}, gloo. Budget: "
             f"**{_gib(BUDGET_BYTES)} per process** (a container's limit, or one rank's share of a host). "
             f"The gpt preset scaled up ({', '.join(m.split('.')[1] for m in model)}: {params / 1e6:.1f} M "
             f"parameters), global batch {GLOBAL_BATCH} × 256 tokens, AdamW, fp32, {steps} optimizer steps "
             "per layout through `scaletrain train` (ddp and fsdp: 2 ranks of 1 thread under torchrun; "
             "single: one process of 2 threads).", "",
             "| layout | AC | parameters | model state per rank | peak RSS per rank (max over ranks) | "
             "`scaletrain plan` predicts | fits the budget? |",
             "|---|---|---:|---:|---:|---:|---|"]
    for name, r in rows.items():
        state = max(r["model_state_bytes_per_rank"] or [0])
        lines.append(f"| {r['strategy']}{' × 2' if r['ranks'] > 1 else ''} | "
                     f"{'yes' if r['activation_checkpointing'] else 'no'} | {r['parameters']:,} | "
                     f"{_gib(state)} | {_gib(r['peak_rss_bytes_max_rank'])} | {_gib(r['plan']['peak_bytes'])} | "
                     f"{'**yes**' if r['fits_budget'] else 'no'} |")
    fit = [n for n, r in rows.items() if r["fits_budget"]]
    over = [n for n, r in rows.items() if not r["fits_budget"]]
    gaps = [(r["peak_rss_bytes_max_rank"] - r["plan"]["peak_bytes"]) / 2**30 for r in rows.values()]
    lines += ["", f"Within {_gib(BUDGET_BYTES)}: {', '.join(fit) or 'none'}. Over it: {', '.join(over) or 'none'}. "
              f"The measured peaks lie {min(gaps):+.2f} to {max(gaps):+.2f} GiB from the plan's.", ""]
    pairs = [(n, f"{n} + AC") for n in ("single", "ddp", "fsdp") if n in rows and f"{n} + AC" in rows]
    if pairs:  # what each technique saves, from the measured peaks
        saved = ", ".join(f"{_gib(rows[a]['peak_rss_bytes_max_rank'] - rows[b]['peak_rss_bytes_max_rank'])} "
                          f"under {a}" for a, b in pairs)
        lines += [f"Activation checkpointing lowers the peak by {saved}; fsdp on 2 ranks holds "
                  f"{max(rows['fsdp']['model_state_bytes_per_rank']) / max(rows['ddp']['model_state_bytes_per_rank']):.0%} "
                  "of ddp's model state per rank. The plan counts live tensors; a process's resident "
                  "memory also keeps freed memory the allocator has not returned to the system, so the "
                  "measured peaks run above the plan's.", ""]
    lines += [
              "Model state is measured from the tensors after the first step (parameters, gradients, AdamW "
              "moments; local shards only). Peak RSS is each rank's own `ru_maxrss` over the whole run, "
              "including the Python/torch runtime, the final checkpoint and the consolidated export (under "
              "fsdp rank 0 gathers the full weights into a meta-device skeleton then, and holds no copy "
              "of them during training). The plan's figure is its tensor count plus its "
              f"{_gib(rows[next(iter(rows))]['plan']['runtime_bytes'])} runtime constant. The budget is "
              "compared with the measured peaks, not enforced on the processes.", END]
    write_section(ROOT / "docs" / "performance.md", START, END, "\n".join(lines),
                  after="<!-- scaling:end -->")  # right after the scaling section


if __name__ == "__main__":
    raise SystemExit(main())
