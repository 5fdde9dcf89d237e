"""How close does `scaletrain plan` come to real peak memory and step time? (docs/plan.md)

Each configuration of the grid runs in a fresh process (several ranks under torchrun for the
distributed ones) that builds the model, optimizer and layout with scaletrain's own building blocks
and trains a few steps on random tokens. Measured peak memory per rank:

    VmHWM (the resident-set high-water mark, /proc/self/status) after the steps
  - VmHWM just before the model is built (after importing torch, joining the process group and
    running one tiny warm-up step, so kernels and thread pools are already loaded)

The planner predicts exactly that quantity (`memory(...)["peak"]`). Step time is the median of the
timed steps. Writes docs/plan.md's table (between markers) and docs/results/plan.json.

    .venv/bin/python benchmarks/plan_accuracy.py            # the whole grid (~3 min)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS, TIMED = 3, 2  # steps per run; the last TIMED are timed (the first builds optimizer state)

# name, overrides. Base: a GPT with rotary positions, fp32, AdamW (fused), one thread per rank.
GRID = [
    ("d256-L4-b8-T256", {}),
    ("d256-L4-b16-T256", {"train.batch_size": 16}),
    ("d256-L4-b4-T512", {"train.batch_size": 4, "data.seq_len": 512}),
    ("d384-L6-b8-T256", {"model.d_model": 384, "model.n_head": 6, "model.n_layer": 6}),
    ("d512-L4-b8-T256-V8k", {"model.d_model": 512, "model.n_head": 8, "data.vocab_size": 8192}),
    ("d256-L8-b8-T256-V1k", {"model.n_layer": 8, "data.vocab_size": 1024}),
    ("d256-L4-b8-sgd", {"optim.name": "sgd"}),
    ("d256-L4-b8-momentum", {"optim.name": "momentum"}),
    ("d256-L4-b16-ac", {"train.batch_size": 16, "parallel.activation_checkpointing": True}),
    ("d384-L6-b8-ac", {"model.d_model": 384, "model.n_head": 6, "model.n_layer": 6,
                       "parallel.activation_checkpointing": True}),
    ("d256-L4-b8x2-accum", {"train.grad_accum": 2}),
    ("d256-L4-b8-learned-pos", {"model.rope": False}),
    ("d256-L4-b8-ddp2", {"parallel.strategy": "ddp", "parallel.nproc": 2}),
    ("d256-L4-b8-zero1x2", {"parallel.strategy": "zero1", "parallel.nproc": 2}),
    ("d256-L4-b8-fsdp2", {"parallel.strategy": "fsdp", "parallel.nproc": 2}),
    ("d256-L4-b8-fsdp2-zero2", {"parallel.strategy": "fsdp", "parallel.nproc": 2,
                                "parallel.reshard_after_forward": False}),
]
BASE = {"model.name": "gpt", "model.n_layer": 4, "model.n_head": 4, "model.d_model": 256, "model.rope": True,
        "data.vocab_size": 4096, "data.seq_len": 256, "train.batch_size": 8, "train.precision": "fp32",
        "train.threads": 1, "optim.name": "adamw"}


def config(overrides: dict):
    from scaletrain.config.load import load_config

    items = {**BASE, **overrides}
    return load_config(None, [f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in items.items()])


def hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def worker(overrides: dict) -> dict:
    """One configuration in this process (one rank of it under torchrun)."""
    import gc

    import torch
    import torch.nn.functional as F

    from scaletrain.diagnose.plan import data_shape
    from scaletrain.models import build_model, get_family
    from scaletrain.optim.param_groups import param_groups
    from scaletrain.optim.registry import build_optimizer
    from scaletrain.parallel.config import ParallelConfig
    from scaletrain.parallel.dist import DistInfo, init_distributed, shutdown
    from scaletrain.parallel.layout import build_layout, wrap_optimizer
    from scaletrain.train.step import plain_forward_backward, train_step

    cfg = config(overrides)
    torch.set_num_threads(cfg.train.threads)
    info = init_distributed("cpu", 120.0)

    def loss_fn(logits, y):  # LanguageModeling.loss
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    def build(args):
        model = build_model("gpt", args)
        return model

    def optimizer_for(layout):
        o = cfg.optim
        groups = param_groups(layout.model, o.weight_decay, o.lr_multipliers)
        return wrap_optimizer(layout, groups, lambda g: build_optimizer(
            o.name, g, lr=1e-4, weight_decay=o.weight_decay, betas=tuple(o.betas), eps=o.eps,
            momentum=o.momentum, fused=o.fused, options=getattr(o, o.name, None)))

    # Warm-up: a tiny model through the same path loads kernels, thread pools and allocator arenas.
    tiny = build({"vocab_size": 64, "seq_len": 8, "n_layer": 1, "n_head": 2, "d_model": 16, "rope": True})
    opt = torch.optim.AdamW(tiny.parameters(), fused=True)
    x = torch.randint(0, 64, (2, 8))
    tiny_layout = build_layout(tiny, get_family("gpt"), ParallelConfig(), DistInfo(), precision="fp32", compile=False)
    fb = plain_forward_backward(tiny, loss_fn, device=torch.device("cpu"), autocast=tiny_layout.autocast)
    train_step(fb, [(x, x)], opt, tiny_layout, params=list(tiny.parameters()), grad_clip=1.0)
    del tiny, opt, x
    gc.collect()
    baseline = hwm_bytes()

    args = get_family("gpt").args_from_config(cfg.model, data_shape(cfg))  # as the trainer builds it
    torch.manual_seed(0)
    model = build(args)
    layout = build_layout(model, get_family("gpt"), cfg.parallel, info, precision="fp32", compile=False,
                          loss_fn=loss_fn)
    optimizer = optimizer_for(layout)
    forward_backward = layout.forward_backward or plain_forward_backward(
        layout.module, loss_fn, device=info.device, autocast=layout.autocast, grad_sync=layout.grad_sync)
    params = [p for p in layout.trained.parameters() if p.requires_grad]
    B, T, V = cfg.train.batch_size, cfg.data.seq_len, cfg.data.vocab_size
    gen = torch.Generator().manual_seed(info.rank)
    times = []
    for step in range(STEPS):
        batches = []
        for _ in range(cfg.train.grad_accum):
            tokens = torch.randint(0, V, (B, T + 1), generator=gen)
            batches.append((tokens[:, :-1], tokens[:, 1:]))
        t0 = time.perf_counter()
        train_step(forward_backward, batches, optimizer, layout, params=params, grad_clip=cfg.train.grad_clip)
        times.append(time.perf_counter() - t0)
    peak = hwm_bytes() - baseline
    result = {"rank": info.rank, "measured_bytes": peak, "baseline_bytes": baseline,
              "step_seconds": statistics.median(times[-TIMED:])}
    if info.world > 1:
        import torch.distributed as dist

        out = [None] * info.world
        dist.all_gather_object(out, result)
        del model, optimizer, layout
        gc.collect()
        shutdown()
        return out
    return [result]


def predicted(overrides: dict) -> dict:
    from scaletrain.diagnose import plan
    from scaletrain.diagnose.devices import this_cpu

    cfg = config(overrides)
    s = plan.model_spec(cfg)
    p = cfg.parallel
    world = p.nproc
    dims = p.dims(world)
    t = cfg.train
    mem = plan.memory(s, cfg.optim.name, dims, t.batch_size, t.grad_accum, "fp32",
                      p.activation_checkpointing, False, "cpu", p.reshard_after_forward)
    device = this_cpu(threads=t.threads * world)  # the ranks together use this many threads
    comp, comm, _ = plan.step_time(s, device, dims, t.batch_size, t.grad_accum, "fp32",
                                   p.activation_checkpointing, False, p.reshard_after_forward)
    return {"memory": mem, "step_seconds": comp + comm, "parameters": s.params}


def run_one(name: str, overrides: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    nproc = overrides.get("parallel.nproc", 1)
    spec = json.dumps(overrides)
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               __file__, "--worker", spec]
    else:
        cmd = [sys.executable, __file__, "--worker", spec]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    ranks = json.loads(lines[0][len("RESULT "):])
    measured = max(r["measured_bytes"] for r in ranks)  # the rank that needs the most sets the limit
    pred = predicted(overrides)
    error = pred["memory"]["peak"] / measured - 1
    return {"name": name, "overrides": overrides, "world_size": nproc, "parameters": pred["parameters"],
            "predicted_bytes": pred["memory"]["peak"], "predicted_breakdown": pred["memory"],
            "measured_bytes": measured, "measured_per_rank": [r["measured_bytes"] for r in ranks],
            "baseline_bytes": ranks[0]["baseline_bytes"], "error": error,
            "within_15pct": abs(error) <= 0.15,
            "predicted_step_seconds": pred["step_seconds"],
            "measured_step_seconds": max(r["step_seconds"] for r in ranks)}


def write_outputs(rows: list[dict], out_md: Path, out_json: Path) -> None:
    import torch

    from scaletrain.atomic import write_text_atomic
    from scaletrain.hardware import machine_info

    within = sum(r["within_15pct"] for r in rows)
    meta = {"date": datetime.date.today().isoformat(), "machine": machine_info(),
            "torch": torch.__version__, "python": platform.python_version()}
    from docs_out import write_results

    write_results(out_json, {**meta, "configs": rows, "within_15pct": within, "total": len(rows),
                             "fraction_within_15pct": within / len(rows)})
    mib = 2**20
    table = [f"Measured on {meta['date']} ({meta['machine']['cpu_model']}, {meta['machine']['logical_cores']} "
             f"cores, torch {meta['torch']}): **{within} of {len(rows)} configurations within ±15 %** "
             f"({100 * within / len(rows):.0f} %; target ≥ 90 %). Raw figures: "
             "[results/plan.json](results/plan.json).", "",
             "| configuration | ranks | params (M) | predicted MiB | measured MiB | error | predicted step s | measured step s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['name']} | {r['world_size']} | {r['parameters'] / 1e6:.2f} | "
                     f"{r['predicted_bytes'] / mib:,.1f} | {r['measured_bytes'] / mib:,.1f} | "
                     f"{100 * r['error']:+.1f} % | {r['predicted_step_seconds']:.3f} | "
                     f"{r['measured_step_seconds']:.3f} |")
    text = out_md.read_text() if out_md.exists() else "<!-- plan-accuracy:start -->\n<!-- plan-accuracy:end -->\n"
    start, end = "<!-- plan-accuracy:start -->", "<!-- plan-accuracy:end -->"
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    write_text_atomic(out_md, head + start + "\n" + "\n".join(table) + "\n" + end + tail)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--only", default=None, help="comma-separated configuration names")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--repredict", action="store_true",
                    help="recompute the predictions for the measured figures in OUT/results/plan.json")
    args = ap.parse_args()
    if args.worker is not None:
        result = worker(json.loads(args.worker))
        if int(os.environ.get("RANK", "0")) == 0:
            print("RESULT " + json.dumps(result), flush=True)
        return 0
    if args.repredict:  # the model changed, the measurements stand: recompute the predictions only
        saved = json.loads((args.out / "results" / "plan.json").read_text())["configs"]
        rows = []
        for row in saved:
            pred = predicted(row["overrides"])
            error = pred["memory"]["peak"] / row["measured_bytes"] - 1
            rows.append({**row, "predicted_bytes": pred["memory"]["peak"], "predicted_breakdown": pred["memory"],
                         "predicted_step_seconds": pred["step_seconds"], "error": error,
                         "within_15pct": abs(error) <= 0.15})
        write_outputs(rows, args.out / "plan.md", args.out / "results" / "plan.json")
        return 0
    grid = [(n, o) for n, o in GRID if not args.only or n in args.only.split(",")]
    rows = []
    for name, overrides in grid:
        row = run_one(name, overrides)
        rows.append(row)
        print(f"{name:28s} predicted {row['predicted_bytes'] / 2**20:8.1f} MiB  measured "
              f"{row['measured_bytes'] / 2**20:8.1f} MiB  error {100 * row['error']:+6.1f} %  step "
              f"{row['predicted_step_seconds']:.3f} / {row['measured_step_seconds']:.3f} s", flush=True)
    if not args.only:
        write_outputs(rows, args.out / "plan.md", args.out / "results" / "plan.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
