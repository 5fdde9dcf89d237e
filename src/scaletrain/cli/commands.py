"""train, eval and generate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scaletrain.errors import UserError


def register(sub) -> None:
    from scaletrain.cli.args import int_in, temperature, utf8_text
    from scaletrain.config.load import DEFAULT_PRESET, preset_names
    from scaletrain.config.schema import INT64, MAX_STEPS

    p = sub.add_parser(
        "train", help="train a model from a preset or a YAML config",
        description="Train from a preset or a YAML file, with section.key=value overrides. "
        f"No argument trains the default preset ({DEFAULT_PRESET}). Presets: {', '.join(preset_names())}.",
        epilog="examples: scaletrain train | scaletrain train mlp-digits | "
        "scaletrain train gpt-tiny train.max_steps=100 optim.lr=1e-3 | scaletrain train runs/X/config.yaml",
    )
    p.add_argument("items", nargs="*", metavar="[CONFIG|PRESET] [section.key=value ...]")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run on its validation split",
                       description="Load RUN/model.safetensors and report validation metrics as JSON.")
    p.add_argument("run", help="run folder")
    p.add_argument("--batches", type=int_in(0, MAX_STEPS), default=0, help="validation batches (0: the whole split)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="sample text from a trained GPT run",
                       description="Sample a continuation of --prompt from RUN/model.safetensors.")
    p.add_argument("run", help="run folder")
    p.add_argument("--prompt", type=utf8_text, default="def ", help="text to continue (default: 'def ')")
    # Generation has no KV cache: each token is a forward over the context, so 2**20 is hours.
    p.add_argument("--tokens", type=int_in(1, 1 << 20), default=200, help="new tokens to generate")
    p.add_argument("--temperature", type=temperature, default=0.8, help="0 means greedy; else 0.001 to 1000")
    p.add_argument("--top-k", type=int_in(0, 2**31 - 1), default=50, help="sample among the k likeliest (0: all)")
    p.add_argument("--seed", type=int_in(0, INT64 - 1), default=0)
    p.set_defaults(func=cmd_generate)


def split_items(items: list[str]) -> tuple[str | None, list[str]]:
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def cmd_train(args: argparse.Namespace) -> int:
    from scaletrain.config.load import load_config

    source, overrides = split_items(args.items)
    cfg = load_config(source, overrides, this_machine=True)  # validated before torch is even imported

    from scaletrain.cli.launch import launch, needs_launch

    if needs_launch(cfg):  # parallel.nproc > 1: start torchrun, whose workers land below
        return launch(cfg, source, overrides)
    from scaletrain.train.build import build_trainer

    trainer = build_trainer(cfg)
    summary = trainer.fit()
    if trainer.dist_info.is_main:
        _print_result(trainer.run_dir, summary)
    return 0


def _print_result(run_dir: Path, summary: dict) -> None:
    from rich.console import Console

    console = Console()
    shown = [f"{k}={summary[k]:.4g}" for k in ("train_loss", "val_loss", "val_bpb", "unigram_loss",
                                                 "val_accuracy", "mfu") if isinstance(summary.get(k), float)]
    console.print("done: " + "  ".join(shown))
    if summary.get("sample"):
        console.print("sample:", style="bold")
        console.print(summary["sample"], markup=False, highlight=False)
    if summary.get("sample_error"):
        console.print(f"no sample: {summary['sample_error']}", markup=False, highlight=False)
    console.print(f"run folder: {run_dir}")


def load_run(run: str):
    """(config, model) of a finished run folder, read through `scaletrain.untrusted`: the weights
    come from safetensors (never pickle), checked against the recorded model description."""
    from scaletrain.config.load import load_config
    from scaletrain.models.folder import read_model_dir

    run_dir = Path(run)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a run folder (no such directory)")
    for name in ("config.yaml", "model_config.json", "model.safetensors"):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir / name}: missing (is {run} a finished run folder?)")
    cfg = load_config(str(run_dir / "config.yaml"))
    spec, model = read_model_dir(run_dir)
    if spec.get("name") != cfg.model.name:
        raise UserError(f"{run_dir / 'model_config.json'}: describes a {spec.get('name')!r} model, but "
                        f"config.yaml trains {cfg.model.name!r}")
    return cfg, model


def cmd_eval(args: argparse.Namespace) -> int:
    from scaletrain.train.build import build_task, check_device
    from scaletrain.train.step import autocast_context

    cfg, model = load_run(args.run)
    cfg.log.progress = False
    device = check_device(cfg)
    task, args_of_data, _, _ = build_task(cfg, device)
    vocab = args_of_data.get("vocab_size")
    if vocab is not None and vocab != getattr(model.args, "vocab_size", vocab):
        raise UserError(f"{args.run}: the model was trained on a vocabulary of {model.args.vocab_size} tokens, "
                        f"its configured data is tokenized into {vocab}: not this run's data")
    model.to(device).eval()
    batch_size = cfg.train.eval_batch_size or cfg.train.batch_size
    from scaletrain.hardware import choose_precision

    precision, _ = choose_precision(cfg.train.precision, device)  # "auto": what this machine runs best
    metrics = task.evaluate(model, batches=args.batches, batch_size=batch_size, device=device,
                            autocast=autocast_context(device, precision))
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from scaletrain.data.tokenizer import load_tokenizer

    cfg, model = load_run(args.run)
    from scaletrain.models import FAMILIES

    if FAMILIES[cfg.model.name].config.task != "language_modeling" or not hasattr(model, "generate"):
        raise UserError(f"{args.run}: generate needs a language model's run (this one is {cfg.model.name})")
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        # Sampling would end in torch.multinomial on NaN probabilities (a device assert on CUDA).
        raise UserError(f"{args.run}: the model's weights are not finite (NaN or Inf: the run diverged); "
                        "nothing to sample")
    tokenizer = load_tokenizer(Path(args.run) / "tokenizer.json")
    # A pretrained model's embedding may be padded beyond its tokenizer; never the other way round.
    if tokenizer.get_vocab_size() > model.args.vocab_size:
        raise UserError(f"{Path(args.run) / 'tokenizer.json'}: a vocabulary of {tokenizer.get_vocab_size()} "
                        f"tokens, but the model was trained on {model.args.vocab_size}: not this run's tokenizer")
    ids = tokenizer.encode(args.prompt).ids
    if not ids:
        raise UserError("--prompt: empty")
    model.eval()
    gen = torch.Generator().manual_seed(args.seed)
    out = model.generate(torch.tensor([ids]), args.tokens, temperature=args.temperature,
                         top_k=args.top_k or None, generator=gen)
    print(tokenizer.decode(out[0].tolist()))
    return 0
