"""`scaletrain profile`: N training steps under torch.profiler, split into data / forward / backward /
optimizer / communication, with the top ops and a Chrome trace.

The steps are the trainer's own building blocks (build_task, build_model, parallel.layout, the
optimizer registry, the task's loss), written out here so that each phase sits inside a
`torch.profiler.record_function` range: the trainer's loop (train/step.py) has no hook between
forward and backward. Communication ops (gloo/nccl collectives) run inside those phases (DDP's
all-reduce during backward, FSDP's all-gathers during forward); their time is attributed to the
phase that contains them and reported separately, so the five parts add up to the step.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from scaletrain.config.schema import Config
from scaletrain.errors import UserError

PHASES = ("data", "forward", "backward", "optimizer")
_COMM = ("c10d::", "gloo", "nccl", "allreduce", "all_reduce", "allgather", "all_gather", "reduce_scatter",
         "_reduce_scatter", "broadcast")


def _is_comm(name: str) -> bool:
    low = name.lower()
    return any(k in low for k in _COMM)


def _build(cfg: Config):
    from scaletrain.models import build_model
    from scaletrain.optim.param_groups import param_groups
    from scaletrain.optim.registry import build_optimizer
    from scaletrain.parallel.dist import init_distributed
    from scaletrain.parallel.layout import build_layout, wrap_optimizer
    from scaletrain.train.build import build_task, check_device

    device = check_device(cfg)
    info = init_distributed(device.type, cfg.parallel.timeout_seconds)
    task, args, _, _ = build_task(cfg, info.device, progress=False)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model.name, args)
    layout = build_layout(model, cfg.parallel, info, precision=cfg.train.precision, compile=cfg.train.compile)
    o = cfg.optim
    groups = param_groups(layout.model, o.weight_decay, o.lr_multipliers)
    optimizer = wrap_optimizer(layout, groups, lambda g: build_optimizer(
        o.name, g, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas), eps=o.eps,
        momentum=o.momentum, fused=o.fused, options=getattr(o, o.name, None)))
    return info, task, model, layout, optimizer


def profile(cfg: Config, *, steps: int, warmup: int, out: Path, top: int = 15) -> dict | None:
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    from scaletrain.atomic import write_json_atomic
    from scaletrain.parallel.dist import launched_by_torchrun, shutdown
    from scaletrain.train.step import autocast_context, forward, to_device

    if cfg.parallel.nproc * cfg.parallel.nnodes > 1 and not launched_by_torchrun():
        raise UserError("profile: parallel.nproc > 1: start it under torchrun "
                        "(torchrun --standalone --nproc-per-node N -m scaletrain profile ...)")
    if cfg.parallel.strategy == "pp":
        raise UserError("profile: parallel.strategy=pp runs its own pipeline schedule; profile another layout")
    if cfg.optim.name == "gd":
        raise UserError("profile: optim.name=gd reads the whole training set per step; profile with sgd")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} is a file")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    info, task, model, layout, optimizer = _build(cfg)
    t = cfg.train
    fsdp_casts = cfg.parallel.strategy in ("fsdp", "fsdp+tp")
    autocast = autocast_context(info.device, "fp32" if fsdp_casts else t.precision)
    b, dp, r = t.batch_size, layout.dp_world, layout.dp_rank
    per_step = b * t.grad_accum * dp
    sync = (lambda: torch.cuda.synchronize()) if info.device.type == "cuda" else (lambda: None)
    seconds = {p: 0.0 for p in PHASES}
    units = 0

    def step(i: int, timed: bool):
        nonlocal units
        marks = [time.perf_counter()]
        with record_function("data"):
            batches = [task.train_batch(i * per_step + k * b * dp + r * b, b) for k in range(t.grad_accum)]
        marks.append(time.perf_counter())
        fwd = bwd = 0.0
        for k, (x, y) in enumerate(batches):
            ctx = layout.grad_sync(k == len(batches) - 1) if layout.distributed else nullcontext()
            with ctx:
                t0 = time.perf_counter()
                with record_function("forward"), autocast:
                    loss = task.loss(forward(layout.module, to_device(x, info.device)), y.to(info.device))
                    loss = loss / len(batches)
                sync()
                t1 = time.perf_counter()
                with record_function("backward"):
                    loss.backward()
                sync()
                fwd, bwd = fwd + t1 - t0, bwd + time.perf_counter() - t1
        t2 = time.perf_counter()
        with record_function("optimizer"):
            params = [p for p in layout.module.parameters() if p.grad is not None]
            if t.grad_clip > 0:
                if layout.distributed:
                    from scaletrain.parallel.layout import clip_grads, global_grad_norm

                    clip_grads(params, t.grad_clip, global_grad_norm(params))
                else:
                    torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync()
        if timed:
            seconds["data"] += marks[1] - marks[0]
            seconds["forward"] += fwd
            seconds["backward"] += bwd
            seconds["optimizer"] += time.perf_counter() - t2
            units += sum(task.units(x) for x, _ in batches) * dp

    for i in range(warmup):
        step(i, timed=False)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if info.device.type == "cuda" else [])
    wall = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        for i in range(warmup, warmup + steps):
            step(i, timed=True)
    wall = time.perf_counter() - wall
    report = None
    if info.is_main:
        comm_by_phase = _communication(prof)
        report = _report(cfg, prof, seconds, comm_by_phase, steps, units, wall, top, info.world)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".trace.{os.getpid()}.json"
        prof.export_chrome_trace(str(tmp))
        tmp.replace(out / "trace.json")
        report["trace"] = str(out / "trace.json")
        write_json_atomic(out / "profile.json", report)
    if info.world > 1:
        del model, optimizer, layout
        shutdown()
    return report


def _communication(prof) -> dict:
    """Seconds of collective ops inside each phase range (by time interval containment)."""
    ranges, comm = [], []
    for e in prof.events():
        if e.name in PHASES:
            ranges.append((e.time_range.start, e.time_range.end, e.name))
        elif _is_comm(e.name) and e.device_type == torch.autograd.DeviceType.CPU:
            comm.append((e.time_range.start, e.time_range.end))
    out = {p: 0.0 for p in PHASES}
    outer = []  # keep only the outermost comm events: nested ones (c10d -> gloo) would count twice
    for s, e in sorted(comm):
        if outer and s < outer[-1][1]:
            continue
        outer.append((s, e))
    for s, e in outer:
        for rs, re_, name in ranges:
            if rs <= s and e <= re_:
                out[name] += (e - s) / 1e6
                break
    return out


def _report(cfg, prof, seconds, comm, steps, units, wall, top, world) -> dict:
    per_step = {p: seconds[p] / steps for p in PHASES}
    comm_step = {p: comm[p] / steps for p in PHASES}
    split = {p: max(0.0, per_step[p] - comm_step[p]) for p in PHASES}
    split["communication"] = sum(comm_step.values())
    total = sum(split.values())
    averages = prof.key_averages()
    ops = sorted((a for a in averages if a.key not in PHASES and not a.key.startswith("ProfilerStep")),
                 key=lambda a: a.self_cpu_time_total, reverse=True)[:top]
    self_total = sum(a.self_cpu_time_total for a in averages) or 1.0
    return {
        "config": {"model": cfg.model.name, "strategy": cfg.parallel.strategy, "world_size": world,
                   "batch_size": cfg.train.batch_size, "grad_accum": cfg.train.grad_accum,
                   "precision": cfg.train.precision, "optimizer": cfg.optim.name},
        "steps": steps, "step_seconds": total, "wall_seconds_profiled": wall,
        "units_per_second": units / max(sum(seconds.values()), 1e-12),
        "phases_seconds_per_step": split,
        "phases_fraction": {k: v / total if total else 0.0 for k, v in split.items()},
        "top_ops": [{"name": a.key, "calls": a.count, "self_cpu_ms": a.self_cpu_time_total / 1e3,
                     "cpu_total_ms": a.cpu_time_total / 1e3, "self_fraction": a.self_cpu_time_total / self_total}
                    for a in ops],
    }


def format_report(rep: dict) -> str:
    c = rep["config"]
    lines = [f"profile: {c['model']}, {c['strategy']} x{c['world_size']}, micro-batch {c['batch_size']} x "
             f"{c['grad_accum']}, {c['precision']}, {c['optimizer']}: {rep['steps']} steps, "
             f"{rep['step_seconds'] * 1e3:.1f} ms per step", "", "step time split (per step):"]
    for k, v in rep["phases_seconds_per_step"].items():
        lines.append(f"  {k:<14} {v * 1e3:9.2f} ms  {100 * rep['phases_fraction'][k]:5.1f} %")
    lines += ["", f"top {len(rep['top_ops'])} ops by self CPU time (all profiled steps):",
              f"  {'op':<44} {'calls':>7} {'self ms':>10} {'total ms':>10} {'self %':>7}"]
    for op in rep["top_ops"]:
        lines.append(f"  {op['name'][:44]:<44} {op['calls']:>7} {op['self_cpu_ms']:>10.2f} "
                     f"{op['cpu_total_ms']:>10.2f} {100 * op['self_fraction']:>6.1f}%")
    lines += ["", f"Chrome trace: {rep.get('trace', '?')} (chrome://tracing or https://ui.perfetto.dev)"]
    return "\n".join(lines)


def load_report(path: Path) -> dict:
    return json.loads(Path(path).read_text())
