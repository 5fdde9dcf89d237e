"""prepare, data verify, data inspect."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scaletrain.errors import UserError


def register(sub) -> None:
    p = sub.add_parser(
        "prepare", help="tokenize a corpus into checksummed shards",
        description="Train a byte-level BPE tokenizer on the training files and write memory-mapped "
        "token shards with a manifest. With no INPUT: the embedded corpus (the Python standard "
        "library's own source).",
    )
    p.add_argument("input", nargs="?", help="a directory of text files (default: the stdlib corpus)")
    p.add_argument("--out", required=True, help="output directory (must not exist yet)")
    p.add_argument("--pattern", default="**/*.txt", help="glob of files to read under INPUT")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--max-bytes", type=int, default=None, help="use a deterministic subset of files")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_prepare)

    data = sub.add_parser("data", help="check or describe prepared shards")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", parser_class=sub._parser_class)
    dsub.required = True
    v = dsub.add_parser("verify", help="recompute every checksum of a shard directory")
    v.add_argument("dir")
    v.set_defaults(func=cmd_verify)
    i = dsub.add_parser("inspect", help="print a shard directory's manifest summary and a sample")
    i.add_argument("dir")
    i.add_argument("--tokens", type=int, default=64, help="tokens of the first training document to show")
    i.set_defaults(func=cmd_inspect)


def cmd_prepare(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from scaletrain.config.load import describe
    from scaletrain.config.schema import DataConfig
    from scaletrain.data.prepare import TextSpec, prepare_text

    out = Path(args.out)
    if out.exists():
        raise UserError(f"--out: {out} already exists; choose a new directory")
    try:  # the same bounds as the config's data section
        DataConfig(vocab_size=args.vocab_size, val_fraction=args.val_fraction, path=args.input,
                   max_bytes=args.max_bytes)
    except ValidationError as exc:
        raise UserError(describe(exc, prefix="data")) from None
    if args.workers < 1:
        raise UserError("--workers must be >= 1")
    spec = TextSpec(source="dir" if args.input else "stdlib", path=args.input, pattern=args.pattern,
                    vocab_size=args.vocab_size, val_fraction=args.val_fraction, max_bytes=args.max_bytes)
    prepare_text(spec, out, workers=args.workers, progress=True)
    manifest = json.loads((out / "manifest.json").read_text())
    print(json.dumps({split: {k: v for k, v in entry.items() if k != "files"}
                      for split, entry in manifest["splits"].items()}))
    print(f"wrote {out}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from scaletrain.data.shards import verify

    if not (Path(args.dir) / "manifest.json").is_file():
        raise UserError(f"{args.dir}: no manifest.json (not a prepared shard directory)")
    problems = verify(args.dir)
    for problem in problems:
        print(problem)
    if problems:
        raise UserError(f"{args.dir}: {len(problems)} problem(s) found")
    print(f"ok: every file of {args.dir} matches its checksum")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from scaletrain.data.shards import TokenShards
    from scaletrain.data.tokenizer import load_tokenizer

    root = Path(args.dir)
    if not (root / "manifest.json").is_file():
        raise UserError(f"{args.dir}: no manifest.json (not a prepared shard directory)")
    manifest = json.loads((root / "manifest.json").read_text())
    for split in manifest["splits"]:
        shards = TokenShards(root, split)
        print(f"{split}: {shards.num_tokens:,} tokens, {shards.num_documents:,} documents, "
              f"{shards.source_bytes / max(shards.num_tokens, 1):.2f} bytes/token, dtype {shards.dtype}")
    tokenizer = load_tokenizer(root / "tokenizer.json")
    train = TokenShards(root, "train")
    first = train.get(0, min(args.tokens, train.num_tokens))
    print(f"vocab {tokenizer.get_vocab_size()}, tokenizer {manifest['tokenizer_fingerprint'][:16]}")
    print("first tokens:", repr(tokenizer.decode(first.tolist())))
    return 0
