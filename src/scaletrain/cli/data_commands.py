"""prepare, data verify, data inspect."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scaletrain.errors import UserError


_PREPARE_HELP = """\
Read text into checksummed token shards: read -> normalize -> filter -> exact dedup (XXH3-128)
-> near dedup (MinHash LSH) -> train a byte-level BPE tokenizer -> tokenize, in N worker
processes. INPUT is a file, a directory (files matching --pattern) or a glob; `stdlib` means the
embedded corpus (the Python standard library's source, also the default with no INPUT). Append
@WEIGHT to give an input a mixture weight (e.g. web/*.jsonl@0.5 books@2): each training
document is written floor(w) times plus once more with probability frac(w).

Resume: every finished task leaves a marker under DIR/work; rerunning the same command after a
crash or Ctrl-C redoes only unfinished work. A finished DIR (manifest.json) is refused.

Several machines: `--engine ray` runs the same stages on Ray Data (`pip install
'scaletrain[ray]'`): a local Ray of --workers CPUs by default, or the cluster at --ray-address /
$RAY_ADDRESS, whose nodes all see --out; dedup is then global across the cluster, and the output
is byte-identical to the local engine's. (`--shard i/n --tokenizer TOK.json` on machine i, then
`scaletrain prepare --merge DIR0 DIR1 ... --out DIR`, also splits the work, but dedup is then
within each machine's share.)
DIR/stats.json reports documents_in, documents_out, removed per step, skipped bad input.
"""


def register(sub) -> None:
    from scaletrain.cli.args import float_in, int_in
    from scaletrain.config.schema import MAX_THREADS, MAX_VOCAB

    fraction = float_in(0.0, 1.0)
    p = sub.add_parser(
        "prepare", help="clean, dedup and tokenize a corpus into checksummed shards",
        description=_PREPARE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", nargs="*", help="files, directories, globs or `stdlib` (default: stdlib); "
                   "with --merge: finished prepare directories")
    p.add_argument("--out", required=True, help="output directory (new, or an unfinished run to resume)")
    p.add_argument("--config", help="YAML file with the settings (the keys of PrepareConfig); "
                   "command-line options override it")
    p.add_argument("--merge", action="store_true", help="merge the finished directories INPUT... into --out")
    p.add_argument("--workers", type=int_in(1, MAX_THREADS), default=None,
                   help="worker processes, or Ray CPUs (default: all cores / the whole cluster)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: a process pool on this machine (default); ray: Ray Data, on a cluster")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="--engine ray: join this Ray cluster (default $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--shard", default=None, metavar="I/N", help="process share I of N (0-based)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    g = p.add_argument_group("sources")
    g.add_argument("--kind", choices=["auto", "text", "jsonl", "parquet", "stdlib"], default=None,
                   help="source kind (default auto: by extension; directories are text)")
    g.add_argument("--field", default=None, help="JSONL key / Parquet column with the text (default text)")
    g.add_argument("--pattern", default=None, help="glob of files under a directory INPUT (default **/*)")
    g.add_argument("--max-bytes", type=int_in(1), default=None, help="a deterministic subset of each source's files")
    g = p.add_argument_group("cleaning")
    g.add_argument("--normalize", choices=["NFC", "NFKC", "none"], default=None)
    for flag, kind in (("--min-chars", int_in(0)), ("--max-chars", int_in(1)), ("--max-line-chars", int_in(1)),
                       ("--max-non-alnum-fraction", fraction), ("--max-repeated-line-fraction", fraction)):
        g.add_argument(flag, type=kind, default=None)
    g.add_argument("--exact-dedup", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--near-dedup", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--bands", type=int_in(1, 256), default=None, help="LSH bands (default 14)")
    g.add_argument("--rows", type=int_in(1, 64), default=None, help="rows per band (default 8)")
    g.add_argument("--ngram", type=int_in(1, 32), default=None, help="words per shingle (default 5)")
    g.add_argument("--threshold", type=fraction, default=None,
                   help="estimated Jaccard that makes a near duplicate (default (1/bands)^(1/rows))")
    g = p.add_argument_group("tokenizer and output")
    g.add_argument("--vocab-size", type=int_in(258, MAX_VOCAB), default=None, help="BPE vocabulary (default 8192)")
    g.add_argument("--tokenizer", default=None, help="reuse this tokenizer.json instead of training one")
    g.add_argument("--val-fraction", type=float_in(0.0, 1.0, high_open=True), default=None, help="validation share, by document (default 0.05)")
    g.add_argument("--task-bytes", type=int_in(1), default=None,
                   help="input bytes per task (default: a 64th of the input, between 1 and 64 MiB)")
    g.add_argument("--tokenizer-sample-bytes", type=int_in(1), default=None,
                   help="tokenizer training text (default: 1 KiB per vocabulary entry, at least 4 MiB)")
    p.set_defaults(func=cmd_prepare)

    data = sub.add_parser("data", help="check or describe prepared shards")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", parser_class=sub._parser_class)
    dsub.required = True
    v = dsub.add_parser("verify", help="recompute every checksum of a shard directory")
    v.add_argument("dir")
    v.set_defaults(func=cmd_verify)
    i = dsub.add_parser("inspect", help="print a shard directory's manifest summary and a sample")
    i.add_argument("dir")
    i.add_argument("--tokens", type=int_in(1, 1 << 20), default=64, help="tokens to show of each sample document")
    i.add_argument("--samples", type=int_in(0, 10_000), default=1, help="training documents to decode and show")
    i.set_defaults(func=cmd_inspect)


def _parse_input(item: str, args: argparse.Namespace) -> dict:
    path, weight = item, None
    head, sep, tail = item.rpartition("@")
    if sep and head:
        try:
            path, weight = head, float(tail)
        except ValueError:
            pass  # an @ that is part of the path
    src: dict = {"kind": "stdlib"} if path == "stdlib" else {"path": path}
    if weight is not None:
        src["weight"] = weight
    for key in ("kind", "field", "pattern", "max_bytes"):
        value = getattr(args, key)
        if value is not None and not (key == "kind" and path == "stdlib"):
            src[key] = value
    return src


def _prepare_settings(args: argparse.Namespace) -> dict:
    from scaletrain.data.prepare_config import load_yaml

    raw = load_yaml(args.config) if args.config else {}
    if args.input:
        raw["sources"] = [_parse_input(item, args) for item in args.input]
    elif "sources" not in raw:
        raw["sources"] = [_parse_input("stdlib", args)]
    clean = raw.setdefault("clean", {}) if isinstance(raw.get("clean", {}), dict) else raw["clean"]
    for key in ("normalize", "min_chars", "max_chars", "max_line_chars", "max_non_alnum_fraction",
                "max_repeated_line_fraction"):
        if getattr(args, key) is not None:
            clean[key] = getattr(args, key)
    dd = raw.setdefault("dedup", {}) if isinstance(raw.get("dedup", {}), dict) else raw["dedup"]
    for key, arg in (("exact", "exact_dedup"), ("near", "near_dedup"), ("bands", "bands"),
                     ("rows", "rows"), ("ngram", "ngram"), ("threshold", "threshold")):
        if getattr(args, arg) is not None:
            dd[key] = getattr(args, arg)
    for key in ("vocab_size", "tokenizer", "val_fraction", "task_bytes", "tokenizer_sample_bytes"):
        if getattr(args, key) is not None:
            raw[key] = getattr(args, key)
    return raw


def _parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return (0, 1)
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard: expected I/N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise UserError(f"--shard: need 0 <= I < N, got {text!r}")
    return i, n


def cmd_prepare(args: argparse.Namespace) -> int:
    if args.merge:
        from scaletrain.data.merge import merge

        if len(args.input) < 1:
            raise UserError("--merge needs the finished directories to merge")
        stats = merge([Path(p) for p in args.input], Path(args.out))
        print(json.dumps({k: stats[k] for k in ("documents_in", "documents_out", "tokens")}))
        print(f"wrote {args.out}")
        return 0
    from scaletrain.data.pipeline import run_prepare
    from scaletrain.data.prepare_config import validate

    cfg = validate(_prepare_settings(args))
    shard = _parse_shard(args.shard)
    try:
        stats = run_prepare(cfg, Path(args.out), workers=args.workers, shard=shard, progress=args.progress,
                            engine=args.engine, ray_address=args.ray_address)
    except KeyboardInterrupt:
        print(f"interrupted: finished tasks are kept; rerun the same command to resume {args.out}",
              file=sys.stderr)
        return 130
    summary = {k: stats[k] for k in ("documents_in", "documents_out", "removed", "skipped", "tokens", "seconds")}
    print(json.dumps(summary))
    print(f"wrote {args.out}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from scaletrain.data.shards import verify

    if not (Path(args.dir) / "manifest.json").is_file():
        raise UserError(f"{args.dir}: no manifest.json (not a prepared shard directory)")
    problems = verify(args.dir)
    for problem in problems:
        print(problem)
    if problems:  # listed above; the error line names the first, so that it says what is wrong alone
        raise UserError(f"{args.dir}: {len(problems)} problem(s) found, the first: {problems[0]}")
    print(f"ok: every file of {args.dir} matches its checksum")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from scaletrain.data.shards import TokenShards, read_manifest
    from scaletrain.data.tokenizer import load_tokenizer
    from scaletrain.untrusted.files import read_json

    if args.tokens < 1 or args.samples < 0:
        raise UserError(f"--tokens must be >= 1 and --samples >= 0 (got {args.tokens} and {args.samples})")
    root = Path(args.dir)
    if not (root / "manifest.json").is_file():
        raise UserError(f"{args.dir}: no manifest.json (not a prepared shard directory)")
    manifest = read_manifest(root)  # every field and file name checked before anything is opened
    lines = []  # printed at the end: a folder refused half-way prints nothing but the error
    for split in manifest["splits"]:
        shards = TokenShards(root, split)
        lines.append(f"{split}: {shards.num_tokens:,} tokens, {shards.num_documents:,} documents, "
                     f"{shards.source_bytes / max(shards.num_tokens, 1):.2f} bytes/token, dtype {shards.dtype}")
    tokenizer = load_tokenizer(root / "tokenizer.json")
    train = TokenShards(root, "train")
    lines.append(f"vocab {tokenizer.get_vocab_size()}, tokenizer {str(manifest.get('tokenizer_fingerprint', '?'))[:16]}")
    stats_file = root / "stats.json"
    if stats_file.is_file():  # written by `scaletrain prepare`: what cleaning and dedup removed
        stats = read_json(stats_file, what="the statistics of `scaletrain prepare` (stats.json)")
        lines.append("stats: " + json.dumps({k: stats[k] for k in ("documents_in", "documents_out", "removed",
                                                                  "skipped", "tokens", "seconds") if k in stats}))
    bounds = [int(b) for b in train.doc_starts[: args.samples + 1]] + [train.num_tokens]
    for k in range(min(args.samples, train.num_documents)):
        start, end = bounds[k], bounds[k + 1]
        if not 0 <= start <= end <= train.num_tokens:  # the open checks sizes, not the offsets' values
            raise UserError(f"{root}: train document offsets out of range at document {k} "
                            f"({start}..{end} of {train.num_tokens} tokens); run `scaletrain data verify {root}`")
        ids = train.get(start, min(args.tokens, end - start)).tolist()
        if ids and max(ids) >= train.vocab_size:
            raise UserError(f"{root}: train document {k} holds token id {max(ids)}, outside the vocabulary "
                            f"(vocab_size {train.vocab_size}); run `scaletrain data verify {root}`")
        text = repr(tokenizer.decode(ids))
        lines.append(f"first tokens: {text}" if k == 0 else f"sample {k} ({end - start:,} tokens): {text}")
    print("\n".join(lines))
    return 0
