"""verify: a layout against the single-process reference."""

from __future__ import annotations

import argparse
from pathlib import Path

from scaletrain.errors import UserError


def register(sub) -> None:
    from scaletrain.cli.args import int_in
    from scaletrain.config.schema import MAX_STEPS

    p = sub.add_parser(
        "verify", help="check that a parallel layout matches the single-process reference",
        description="Train K steps with the configured layout (parallel.*, grad_accum, precision) and "
        "with the reference (one process, fp32, no accumulation, the same global batch and data), then "
        "print per step the loss difference and the relative parameter deviation. Exit 1 when a step "
        "is beyond the tolerance for the optimizer and precision (docs/parallel.md).",
        epilog="example: scaletrain verify gpt-tiny parallel.strategy=fsdp parallel.nproc=2 --steps 5",
    )
    p.add_argument("items", nargs="*", metavar="[CONFIG|PRESET] [section.key=value ...]")
    p.add_argument("--steps", type=int_in(1, MAX_STEPS), default=5, help="optimizer steps to compare (default 5)")
    p.add_argument("--keep", default=None, help="keep the recorded weights in this directory")
    p.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from scaletrain.cli.commands import split_items
    from scaletrain.config.load import load_config

    source, overrides = split_items(args.items)
    cfg = load_config(source, overrides, this_machine=True)
    keep = Path(args.keep) if args.keep else None
    if keep is not None and keep.exists():
        raise UserError(f"--keep: {keep} already exists; choose a new directory")

    from rich.console import Console
    from rich.table import Table

    from scaletrain.diagnose.verify import verify

    rows, (loss_tol, param_tol) = verify(cfg, source, overrides, args.steps, keep)
    from scaletrain.parallel.dims import ParallelDims

    world = cfg.parallel.nproc * cfg.parallel.nnodes
    table = Table(title=f"verify: parallel.strategy={ParallelDims.from_config(cfg.parallel, world).strategy} x{world}, "
                        f"grad_accum={cfg.train.grad_accum}, {cfg.train.precision}, optim {cfg.optim.name} "
                        f"vs one process, fp32")
    for col in ("step", "loss", "reference loss", "|loss diff|", "param rel. dev.", "max |dw|", "ok"):
        table.add_column(col, justify="right")
    failed = []
    for r in rows:
        ok = r["loss_diff"] <= loss_tol and r["param_rel_dev"] <= param_tol
        if not ok:
            failed.append(r["step"])
        table.add_row(str(r["step"]), f"{r['loss']:.6f}", f"{r['ref_loss']:.6f}", f"{r['loss_diff']:.2e}",
                      f"{r['param_rel_dev']:.2e}", f"{r['param_max_abs']:.2e}", "yes" if ok else "NO")
    console = Console()
    console.print(table)
    console.print(f"tolerance: |loss diff| <= {loss_tol:g}, param rel. dev. <= {param_tol:g}")
    if failed:
        console.print(f"FAILED at step(s) {failed}")
        return 1
    console.print("verified: the layout matches the reference")
    return 0
