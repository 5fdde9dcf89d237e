"""`scaletrain bench optim`: the optimizer benchmark (scaletrain.diagnose.optim_bench)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    from scaletrain.cli.args import int_in
    from scaletrain.config.schema import MAX_STEPS

    p = sub.add_parser("bench", help="benchmarks that write their table into docs/",
                       description="Run a benchmark and write its table and raw figures.")
    bench_sub = p.add_subparsers(dest="bench", metavar="BENCH", parser_class=type(p))
    bench_sub.required = True
    o = bench_sub.add_parser(
        "optim", help="every optimizer on the same task and budget, each at its best of 3 lrs",
        description="Train the MLP on digits and/or the tiny GPT with every registered optimizer for the "
        "same number of steps, each at the best of 3 learning rates, and write a loss-curve PNG and a "
        "table into OUT/optimizers.md and raw figures into OUT/results/optim.json.")
    o.add_argument("--task", choices=["mlp", "gpt-tiny", "both"], default="both")
    o.add_argument("--steps", type=int_in(1, MAX_STEPS), default=None,
                   help="steps per run (default: 300 for mlp, 150 for gpt-tiny)")
    o.add_argument("--out", type=Path, default=Path("docs"), help="output folder (default: docs)")
    o.add_argument("--optimizers", default=None, help="comma-separated subset of optimizer names (default: all)")
    o.add_argument("--cache-dir", default=None, help="data.cache_dir for the runs (default: the config's)")
    o.set_defaults(func=cmd_bench_optim)


def cmd_bench_optim(args) -> int:
    from scaletrain.atomic import check_target
    from scaletrain.diagnose.optim_bench import bench

    check_target(args.out, "--out", folder=True)  # before an hour of runs, not after
    tasks = ["mlp", "gpt-tiny"] if args.task == "both" else [args.task]
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()] if args.optimizers else None
    bench(tasks, args.steps, args.out, names=names, cache_dir=args.cache_dir, log=lambda m: print(m, flush=True))
    print(f"wrote {args.out / 'optimizers.md'}, {args.out / 'optimizers-loss.png'} and "
          f"{args.out / 'results' / 'optim.json'}")
    return 0
