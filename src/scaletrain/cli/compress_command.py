"""scaletrain compress RUN --method M: quantize, prune, distill or factorize a trained run."""

from __future__ import annotations

import argparse

from scaletrain.errors import UserError


def register(sub) -> None:
    from scaletrain.cli.args import float_in, int_in
    from scaletrain.compress.names import METHODS
    from scaletrain.config.schema import MAX_STEPS, MAX_THREADS

    fraction = float_in(0.0, 1.0, high_open=True)

    p = sub.add_parser(
        "compress", help="compress a trained run (int8, pruning, distillation, low-rank, ONNX)",
        description="Read RUN's weights (model.safetensors, or its last checkpoint, consolidated if "
        "sharded), apply --method and write a new folder with the compressed model, report.md, "
        f"compression.png and summary.json. Methods: {', '.join(METHODS)}.",
        epilog="examples: scaletrain compress runs/gpt --method onnx-int8 | scaletrain compress runs/gpt "
        "--method prune-structured --amount 0.5 --finetune-steps 200 | scaletrain compress runs/mlp "
        "--method distill --student hidden=[32,16] --distill-steps 500")
    p.add_argument("run", help="run folder")
    p.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    p.add_argument("--out", help="output folder (default: RUN-METHOD beside RUN); must not hold files")
    p.add_argument("--checkpoint", help="read the weights from this checkpoint (or run folder's last)")
    p.add_argument("--finetune-steps", type=int_in(0, MAX_STEPS), default=0, help="recovery steps after prune/prune-structured/lowrank")
    p.add_argument("--finetune-lr", type=float_in(0.0, 1e3, low_open=True), help="default: 0.3 x the run's optim.lr")
    p.add_argument("--amount", type=fraction, default=0.5, help="pruned fraction (weights, or units per layer)")
    p.add_argument("--head-amount", type=fraction, help="prune-structured, GPT: pruned fraction of heads (default --amount)")
    p.add_argument("--energy", type=float_in(0.0, 1.0, low_open=True), default=0.9, help="lowrank: retained fraction of sum of squared singular values")
    p.add_argument("--student", nargs="*", default=[], metavar="KEY=VALUE",
                   help="distill: student model args (YAML values), e.g. d_model=96 n_layer=3 or hidden=[45,22]")
    p.add_argument("--distill-steps", type=int_in(1, MAX_STEPS), help="distill: training steps (default: the run's train.max_steps)")
    # Distillation divides both models' logits by it: below 0.001 they overflow float32.
    p.add_argument("--temperature", type=float_in(1e-3, 1e3), default=2.0, help="distill: softening temperature")
    p.add_argument("--alpha", type=float_in(0.0, 1.0), default=0.5, help="distill: weight of the KL term")
    p.add_argument("--no-baseline", action="store_true", help="distill: skip the from-scratch student")
    p.add_argument("--eval-batches", type=int_in(0, MAX_STEPS), default=16, help="GPT validation batches (0: all)")
    p.add_argument("--latency-rounds", type=int_in(1, 10_000), default=7)
    p.add_argument("--threads", type=int_in(1, MAX_THREADS), default=1, help="threads for every latency measurement")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export check")
    p.add_argument("--backend", choices=("auto", "torchao", "onnxruntime"), default="auto",
                   help="int8-dynamic: the int8 runtime (default auto: the fastest on this CPU, from its "
                   "flags and a measured probe)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="where --finetune-steps and distill train "
                   "(default: the run's train.device, else CUDA when available); evaluation and "
                   "latency are measured on the CPU")
    p.set_defaults(func=cmd_compress)


def _student(items: list[str]) -> dict:
    from scaletrain.config.load import parse_value
    from scaletrain.config.schema import brief

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--student: expected KEY=VALUE, got {brief(item)}")
        out[key] = parse_value(value, f"--student {brief(key)}")  # YAML within the config limits
    return out


def cmd_compress(args: argparse.Namespace) -> int:
    from scaletrain.compress import compress

    s = compress(args.run, args.method, args.out, checkpoint=args.checkpoint,
                 finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr, amount=args.amount,
                 head_amount=args.head_amount, energy=args.energy, student=_student(args.student),
                 distill_steps=args.distill_steps, temperature=args.temperature, alpha=args.alpha,
                 baseline=not args.no_baseline, eval_batches=args.eval_batches,
                 latency_rounds=args.latency_rounds, threads=args.threads, onnx=not args.no_onnx,
                 device=args.device, backend=args.backend)
    q = s["quality_metric"]
    for row in s["rows"]:
        print(f"{row['model']:>16}: {row['parameters']:>10,} params  {row['size_bytes'] / 1e6:8.3f} MB  "
              f"{q} {row['quality'][q]:.4g}  p50 b1 {row['latency_ms']['b1']:.2f} ms  "
              f"b64 {row['latency_ms']['b64']:.1f} ms  size x{row['size_ratio']:.3f}  "
              f"speedup b64 x{row['speedup_b64']:.2f}")
    print(f"report: {s['out']}/report.md")
    return 0
