"""plan, doctor, runs and profile: the diagnostics for the everyday problems of training."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scaletrain.atomic import check_target
from scaletrain.errors import UserError


def register(sub) -> None:
    from scaletrain.cli.args import float_in, int_in
    from scaletrain.config.schema import MAX_NODES, MAX_PROCS, MAX_STEPS

    gigabytes = float_in(0.0, 1e6, low_open=True)  # per rank: up to a petabyte
    p = sub.add_parser(
        "plan", help="memory per rank and step time of each layout, before launch",
        description="Estimate, per rank, the memory of parameters, gradients, optimizer state, "
        "activations and temporary buffers, and the step time (FLOPs / peak + communication / bandwidth) "
        "of every layout (ddp, zero1, fsdp ZeRO-2/3, tp, +-activation checkpointing, +-offload, "
        "micro-batch sizes) for the configured model, optimizer and global batch; print a table and "
        "recommend the fastest layout that fits (docs/plan.md).",
        epilog="example: scaletrain plan gpt --world-size 8 --device h100 --write gpt-8xh100.yaml")
    p.add_argument("items", nargs="*", metavar="[CONFIG|PRESET] [section.key=value ...]")
    p.add_argument("--world-size", type=int_in(1, MAX_PROCS * MAX_NODES), default=None,
                   help="ranks to plan for (default: parallel.nproc x parallel.nnodes)")
    p.add_argument("--device", default=None,
                   help="cpu (this machine, measured) or a known device: " + ", ".join(_device_names()))
    p.add_argument("--device-memory", type=gigabytes, default=None, metavar="GB",
                   help="memory per rank in GB (default: the device's)")
    p.add_argument("--write", type=Path, default=None, metavar="CONFIG_OUT",
                   help="write the config with the recommended layout to this YAML file")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--all", action="store_true", help="list every candidate, not only the best per layout")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "doctor", help="find what went wrong in a run, with evidence and remedies",
        description="Read RUN_DIR's metrics.jsonl, summary.json and config.yaml and report findings "
        "(overfitting, divergence, nan, grad_explosion, lr_too_high, lr_too_low, data_bound, low_mfu, "
        "straggler, memory_pressure, damaged_log), each with its evidence (steps, numbers) and a remedy. Exit 0 "
        "whatever it finds (docs/diagnostics.md).",
        epilog="example: scaletrain doctor runs/gpt-20261130-101500 --json")
    p.add_argument("run", help="run folder")
    p.add_argument("--json", action="store_true", help="print the findings as a JSON list")
    p.add_argument("--device-memory", type=gigabytes, default=None, metavar="GB",
                   help="memory per rank to judge the peak against (default: this machine's RAM for CPU runs)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser(
        "runs", help="compare runs: one table of their summaries and a plot of their validation curves",
        description="Read each RUN_DIR's summary.json and metrics.jsonl (a run still going shows its last "
        "logged step) and print one table: steps, train and validation loss, validation accuracy or bits "
        "per byte, throughput, MFU, wall time and why it stopped.",
        epilog="example: scaletrain runs runs/* --plot val.png | scaletrain runs runs/a runs/b --json")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    p.add_argument("--plot", type=Path, metavar="PNG", help="also write their validation loss curves to this file")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser(
        "profile", help="run N steps under torch.profiler: top ops, Chrome trace, step time split",
        description="Build the configured model, data and layout, run --steps optimizer steps under "
        "torch.profiler with data / forward / backward / optimizer ranges, print the top ops by time, "
        "write OUT/trace.json (chrome://tracing, Perfetto) and OUT/profile.json, and split the step "
        "time into data, forward, backward, optimizer and communication.",
        epilog="example: scaletrain profile gpt-tiny --steps 10 --out prof")
    p.add_argument("items", nargs="*", metavar="[CONFIG|PRESET] [section.key=value ...]")
    # The trace grows with every profiled step: 100,000 is already gigabytes.
    p.add_argument("--steps", type=int_in(1, 100_000), default=10, help="profiled optimizer steps (default 10)")
    p.add_argument("--warmup", type=int_in(0, MAX_STEPS), default=2, help="steps run before profiling (default 2)")
    p.add_argument("--out", type=Path, default=Path("profile"), help="output folder (default: profile)")
    p.add_argument("--top", type=int_in(1, 10_000), default=15, help="ops to list (default 15)")
    p.set_defaults(func=cmd_profile)


def _device_names() -> list[str]:
    from scaletrain.diagnose.devices import KNOWN_DEVICES

    return sorted(KNOWN_DEVICES)


def cmd_doctor(args: argparse.Namespace) -> int:
    from scaletrain.diagnose.doctor import diagnose, format_text, load_run

    run = load_run(args.run)
    limit = int(args.device_memory * 1e9) if args.device_memory else None
    findings = diagnose(run, device_memory_bytes=limit)
    if args.json:
        print(json.dumps([f.to_json() for f in findings], indent=2))
    else:
        print(format_text(run, findings))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from scaletrain.diagnose.runs import plot_validation, read_run, table

    if args.plot is not None:
        check_target(args.plot, "--plot", folder=False)
    runs = [read_run(path) for path in args.runs]  # every folder checked before anything is written
    if args.plot is not None:
        plot_validation(runs, args.plot)
    rows = [row for row, _ in runs]
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    if args.plot is not None and not args.json:
        print(f"validation curves: {args.plot}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from scaletrain.cli.commands import split_items
    from scaletrain.config.load import load_config
    from scaletrain.diagnose import plan

    source, overrides = split_items(args.items)
    cfg = load_config(source, overrides)  # plans for any machine: nproc is not checked against this one
    if args.write is not None:
        check_target(args.write, "--write", folder=False, must_be_new=True)
    result = plan.plan(cfg, world_size=args.world_size, device=args.device,
                       device_memory_bytes=int(args.device_memory * 1e9) if args.device_memory else None)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(plan.format_table(result, show_all=args.all))
    if args.write is not None:
        if result.best is None:
            raise UserError("--write: no layout fits in the device memory; nothing written")
        plan.write_config(cfg, result, args.write)
        print(f"wrote {args.write}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from scaletrain.cli.commands import split_items
    from scaletrain.config.load import load_config

    source, overrides = split_items(args.items)
    cfg = load_config(source, overrides, this_machine=True)
    from scaletrain.diagnose.profile import format_report, profile

    report = profile(cfg, steps=args.steps, warmup=args.warmup, out=args.out, top=args.top)
    if report is not None:  # rank 0
        print(format_report(report))
    return 0
