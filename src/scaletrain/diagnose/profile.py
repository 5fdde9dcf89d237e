"""`scaletrain profile`: N training steps under torch.profiler, split into data / forward / backward /
optimizer / communication, with the top ops and a Chrome trace.

The steps are the trainer's own (`train.step.make_train_step` over the layout's forward_backward, the
same data positions, layout and optimizer); the step brackets its forward, backward and optimizer
parts with `phase(name)`, which here opens a `torch.profiler.record_function` range and times it.
Communication ops (gloo/nccl collectives) run inside those phases (DDP's all-reduce during
backward, FSDP's all-gathers during forward); their time is attributed to the phase that contains
them and reported separately, so the five parts add up to the step.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from scaletrain import hardware
from scaletrain.config.schema import Config
from scaletrain.errors import UserError
from scaletrain.parallel.dims import ParallelDims
from scaletrain.train import step as train_steps

PHASES = ("data", "forward", "backward", "optimizer")
_COMM = ("c10d::", "gloo", "nccl", "allreduce", "all_reduce", "allgather", "all_gather", "reduce_scatter",
         "_reduce_scatter", "broadcast")


def _is_comm(name: str) -> bool:
    low = name.lower()
    return any(k in low for k in _COMM)


def _build(cfg: Config):
    from scaletrain.models import build_model, get_family
    from scaletrain.parallel.dist import init_distributed
    from scaletrain.parallel.layout import build_layout
    from scaletrain.train.build import build_task, check_device
    from scaletrain.train.trainer import layout_optimizer

    device = check_device(cfg)
    info = init_distributed(device.type, cfg.parallel.timeout_seconds)
    task, args, _, _ = build_task(cfg, info.device, progress=False)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model.name, args)
    precision, _ = hardware.choose_precision(cfg.train.precision, info.device)  # as the trainer decides it
    layout = build_layout(model, get_family(cfg.model.name), cfg.parallel, info, precision=precision,
                          compile=cfg.train.compile, loss_fn=task.loss)
    t = cfg.train
    optimizer = layout_optimizer(layout, cfg.optim, t.batch_size * t.grad_accum * layout.dp_world)
    return info, task, model, layout, optimizer


class Phases:
    """The train step's `phase(name)`: a profiler range, timed, the device synchronized at its end
    (so that a phase's time is its own work, not the queue it left)."""

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def __call__(self, name: str):
        from torch.profiler import record_function

        began = time.perf_counter()
        with record_function(name):
            yield
            self.sync()
        self.seconds[name] += time.perf_counter() - began


def profile(cfg: Config, *, steps: int, warmup: int, out: Path, top: int = 15) -> dict | None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from scaletrain.atomic import write_json_atomic
    from scaletrain.parallel.dist import launched_by_torchrun, shutdown

    world = cfg.parallel.nproc * cfg.parallel.nnodes
    if not launched_by_torchrun() and world > 1:
        raise UserError("profile: parallel.nproc > 1: start it under torchrun "
                        "(torchrun --standalone --nproc-per-node N -m scaletrain profile ...)")
    if launched_by_torchrun():  # torchrun's protocol: the world it started
        world = int(os.environ["WORLD_SIZE"])
    if ParallelDims.from_config(cfg.parallel, world).pp_enabled:
        raise UserError("profile: the pipeline schedule interleaves forward and backward; profile another layout")
    if cfg.optim.name == "gd":
        raise UserError("profile: optim.name=gd reads the whole training set per step; profile with sgd")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} is a file")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    info, task, model, layout, optimizer = _build(cfg)
    t = cfg.train
    per_step = t.batch_size * t.grad_accum * layout.dp_world
    phases = Phases(info.device)
    forward_backward = train_steps.plain_forward_backward(
        layout.module, task.loss, device=info.device, autocast=layout.autocast, grad_sync=layout.grad_sync,
        phase=phases)
    params = [p for p in layout.trained.parameters() if p.requires_grad]
    train_step = train_steps.make_train_step(forward_backward, optimizer, layout, params=params,
                                             grad_clip=t.grad_clip, phase=phases)
    units = 0

    def step(i: int) -> None:
        nonlocal units
        with phases("data"):
            plan = train_steps.micro_batches(i * per_step, t.batch_size, t.grad_accum, layout.dp_world,
                                             layout.dp_rank)
            batches = [task.train_batch(position, size) for position, size in plan]
        train_step(batches, want_norm=False)
        units += sum(task.units(x) for x, _ in batches) * layout.dp_world

    for i in range(warmup):
        step(i)
    phases.seconds, units = dict.fromkeys(PHASES, 0.0), 0
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if info.device.type == "cuda" else [])
    wall = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        for i in range(warmup, warmup + steps):
            step(i)
    wall = time.perf_counter() - wall
    report = None
    if info.is_main:
        comm_by_phase = _communication(prof)
        report = _report(cfg, layout.dims.strategy, prof, phases.seconds, comm_by_phase, steps, units, wall,
                         top, info.world)
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


def _report(cfg, strategy, prof, seconds, comm, steps, units, wall, top, world) -> dict:
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
        "config": {"model": cfg.model.name, "strategy": strategy, "world_size": world,
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
