"""Preprocessing throughput: `scaletrain prepare` (1 and 2 workers) against HF `datasets`
`.map(num_proc=2, batched=True)` with the same tokenizer on the same text files.

Every variant runs in its own subprocess (a fresh interpreter: no thread pool or page cache
state carried from one variant into the next beyond the OS's), and rounds interleave the
variants, rotating which goes first, because the machine is shared and busy: the ratio within a
round is what we report, with its median and range over rounds.

Both sides start from the same text files on disk and end with token ids on disk:
  scaletrain:  read -> NFC -> (dedup) -> tokenize -> .bin/.idx shards + manifest (fsync'd)
  HF datasets: read -> Dataset.from_dict -> .map(tokenize, batched, num_proc=2) -> save_to_disk
The tokenizer is trained once beforehand and given to both (`--tokenizer`), so both do the same
tokenization work; tokenizer training is reported on its own line.

Usage: python benchmarks/data.py [--mb 12] [--rounds 3]   (needs `pip install -e '.[bench]'`)
Writes the table into docs/performance.md ("## Data preprocessing") and the raw figures into
docs/results/data.json under `prepare_speedup_vs_hf` (other keys of that file are kept).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PERF = ROOT / "docs" / "performance.md"
RESULTS = ROOT / "docs" / "results" / "data.json"
START, END = "<!-- data-prepare:start -->", "<!-- data-prepare:end -->"

VARIANTS = {
    "scaletrain-1": "scaletrain prepare, 1 worker, no dedup",
    "scaletrain-2": "scaletrain prepare, 2 workers, no dedup",
    "scaletrain-2-dedup": "scaletrain prepare, 2 workers, exact + near dedup",
    "hf-2": "HF datasets .map(num_proc=2, batched=True) + save_to_disk",
}


def _corpus(dst: Path, max_bytes: int) -> list[Path]:
    """A deterministic spread-out subset of the stdlib's .py files, copied as .txt files."""
    from scaletrain.data import corpus

    root = corpus.stdlib_root()
    files = corpus.select_max_bytes(corpus.stdlib_files(), max_bytes, root)
    out = []
    for p in files:
        q = dst / p.relative_to(root).with_suffix(".txt")
        q.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, q)
        out.append(q)
    return out


def child(variant: str, src: Path, tok: Path, out: Path) -> dict:
    """One timed run (called in a fresh subprocess); returns tokens and seconds."""
    if variant.startswith("scaletrain"):
        from scaletrain.data.pipeline import run_prepare
        from scaletrain.data.prepare_config import validate

        dedup = variant.endswith("dedup")
        cfg = validate({"sources": [{"path": str(src), "pattern": "**/*.txt"}], "tokenizer": str(tok),
                        "task_bytes": 1 << 20, "dedup": {"exact": dedup, "near": dedup}})
        t0 = time.perf_counter()
        stats = run_prepare(cfg, out, workers=int(variant.split("-")[1]), progress=False)
        seconds = time.perf_counter() - t0
        return {"tokens": stats["tokens"], "seconds": seconds, "documents": stats["documents_out"],
                "phase_seconds": stats["phase_seconds"]}
    import datasets
    from tokenizers import Tokenizer

    datasets.disable_progress_bars()
    os.environ["HF_DATASETS_CACHE"] = str(out / "cache")
    t0 = time.perf_counter()
    files = sorted(src.rglob("*.txt"))
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    ds = datasets.Dataset.from_dict({"text": texts})
    tokenizer = Tokenizer.from_file(str(tok))

    def encode(batch):
        return {"ids": [e.ids for e in tokenizer.encode_batch_fast(batch["text"])]}

    mapped = ds.map(encode, batched=True, num_proc=2, remove_columns=["text"])
    map_seconds = time.perf_counter() - t0
    mapped.save_to_disk(str(out / "saved"))
    seconds = time.perf_counter() - t0
    tokens = sum(len(x) for x in mapped["ids"])  # after the clock: counting is not part of the work
    return {"tokens": tokens, "seconds": seconds, "map_seconds": map_seconds, "documents": len(texts)}


def _run_child(variant: str, src: Path, tok: Path, work: Path) -> dict:
    out = work / f"out-{variant}"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, __file__, "--child", variant, str(src), str(tok), str(out)],
                          capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{proc.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=12.0, help="corpus size in MB")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--child", nargs=4, metavar=("VARIANT", "SRC", "TOK", "OUT"))
    ap.add_argument("--render", action="store_true", help="rewrite the table from results/data.json only")
    args = ap.parse_args()
    if args.render:
        from scaletrain.atomic import write_text_atomic

        record = json.loads(RESULTS.read_text())["prepare_speedup_vs_hf"]
        write_text_atomic(PERF, _with_section(PERF.read_text(), _table(record)))
        return
    if args.child:
        variant, src, tok, out = args.child
        print(json.dumps(child(variant, Path(src), Path(tok), Path(out))))
        return

    import datasets
    import tokenizers

    import scaletrain
    from scaletrain.atomic import write_text_atomic
    from scaletrain.data import tokenizer as tkz

    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        src = work / "src"
        files = _corpus(src, int(args.mb * 1e6))
        nbytes = sum(p.stat().st_size for p in files)
        t0 = time.perf_counter()
        tok = tkz.train_tokenizer((p.read_text(encoding="utf-8", errors="replace") for p in files),
                                  args.vocab_size)
        train_seconds = time.perf_counter() - t0
        tkz.save_tokenizer(tok, work / "tokenizer.json")
        load_before = _load_avg()
        rounds = []
        names = list(VARIANTS)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            results = {v: _run_child(v, src, work / "tokenizer.json", work) for v in order}
            for v in results:
                results[v]["tokens_per_second"] = results[v]["tokens"] / results[v]["seconds"]
            rounds.append(results)
            print(f"round {r + 1}: " + ", ".join(f"{v} {results[v]['tokens_per_second']:,.0f} tok/s"
                                                for v in names), flush=True)
        load_after = _load_avg()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def ratios(a: str, b: str) -> list[float]:
        return [x[a]["tokens_per_second"] / x[b]["tokens_per_second"] for x in rounds]

    summary = {}
    for v in names:
        tps = [x[v]["tokens_per_second"] for x in rounds]
        summary[v] = {"label": VARIANTS[v], "tokens_per_second_median": statistics.median(tps),
                      "tokens_per_second": tps, "seconds": [x[v]["seconds"] for x in rounds],
                      "tokens": rounds[0][v]["tokens"], "documents": rounds[0][v]["documents"],
                      "ratio_vs_hf": ratios(v, "hf-2"), "ratio_vs_hf_median": statistics.median(ratios(v, "hf-2"))}
    record = {
        "speedup": summary["scaletrain-2"]["ratio_vs_hf_median"],
        "speedup_definition": "tokens/s of scaletrain prepare with 2 workers (no dedup: the same work as "
                              "the HF side) / tokens/s of HF datasets .map(num_proc=2) + save_to_disk, "
                              "median over interleaved rounds",
        "target": 1.5,
        "corpus": {"files": len(files), "bytes": nbytes, "source": "Python standard library .py files"},
        "vocab_size": args.vocab_size,
        "tokenizer_train_seconds": train_seconds,
        "rounds": args.rounds,
        "variants": summary,
        "hf_map_seconds": [x["hf-2"]["map_seconds"] for x in rounds],
        # Share of a 1-worker run spent in the tokenize phase (read cleaned text, encode, write
        # shards): how much of the pipeline the tokenizer itself bounds.
        "tokenize_phase_share_1_worker": [x["scaletrain-1"]["phase_seconds"]["tokenize"] / x["scaletrain-1"]["seconds"]
                                          for x in rounds],
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_avg_1min_before_after": [load_before, load_after]},
        "versions": {"scaletrain": scaletrain.__version__, "datasets": datasets.__version__,
                     "tokenizers": tokenizers.__version__},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/data.py " + " ".join(sys.argv[1:]),
    }
    # Read-modify-write: other benchmarks own other keys of the same file.
    from docs_out import merge_results

    merge_results(RESULTS, {"prepare_speedup_vs_hf": record})
    write_text_atomic(PERF, _with_section(PERF.read_text() if PERF.is_file() else "# Performance\n",
                                          _table(record)))
    print(f"speedup vs HF datasets (2 workers each): {record['speedup']:.2f}x")


def _table(r: dict) -> str:
    v = r["variants"]
    lines = [START, "## Data preprocessing", "",
             "Tokens per second from text files on disk to token ids on disk, `scaletrain prepare` against "
             "Hugging Face `datasets` (`Dataset.from_dict` → `.map(batched=True, num_proc=2)` → "
             "`save_to_disk`) with the same byte-level BPE tokenizer, trained once beforehand and given to "
             "both. Every run is a fresh subprocess; rounds interleave the variants (rotating which runs "
             "first) and the ratio is taken within each round, because the machine is shared.", "",
             "| variant | tokens/s (median) | min – max | ratio vs HF (median) | min – max |",
             "|---|---:|---|---:|---|"]
    for name, s in v.items():
        tps, rat = s["tokens_per_second"], s["ratio_vs_hf"]
        lines.append(f"| {s['label']} | {s['tokens_per_second_median']:,.0f} | {min(tps):,.0f} – {max(tps):,.0f} "
                     f"| **{s['ratio_vs_hf_median']:.2f}** | {min(rat):.2f} – {max(rat):.2f} |")
    c = r["corpus"]
    m = r["machine"]
    lines += ["",
              f"- Corpus: {c['files']:,} files, {c['bytes'] / 1e6:.1f} MB of {c['source']}; vocabulary "
              f"{r['vocab_size']:,}; {v['hf-2']['tokens']:,} tokens in {v['hf-2']['documents']:,} documents (HF) / "
              f"{v['scaletrain-2']['tokens']:,} in {v['scaletrain-2']['documents']:,} (scaletrain: plus one "
              "end-of-text token per document; empty files are skipped and counted).",
              f"- Speedup, 2 workers each, no dedup (the same work): **{r['speedup']:.2f}×** (target "
              f"{r['target']}×). The dedup row also computes XXH3-128 and MinHash signatures (14 × 8) of every "
              "document and decides duplicates globally.",
              f"- Where the time goes: with 1 worker the tokenize phase (reading the cleaned text, "
              f"`encode_batch_fast`, writing shards) takes {statistics.median(r['tokenize_phase_share_1_worker']):.0%} "
              "of the run (median over rounds). Both sides spend most of their time in the same Rust BPE "
              "encoder, so the ratio is bounded by what remains around it; the HF side's `.map` alone took "
              f"{statistics.median(r['hf_map_seconds']):.1f} s (median) of its total.",
              "- The machine is shared: with a load average above 2 on 2 cores a second worker process finds "
              "little idle CPU, which is why 1 worker can match or beat 2 here and why single rounds vary widely.",
              f"- Tokenizer training (one process, not part of any row): {r['tokenizer_train_seconds']:.1f} s.",
              f"- Command: `{r['command']}`, {r['rounds']} rounds; raw figures in "
              "[results/data.json](results/data.json) (`prepare_speedup_vs_hf`).",
              f"- Machine: {m['cpu_count']} logical cores, {m['platform']}, Python {m['python']}; "
              f"datasets {r['versions']['datasets']}, tokenizers {r['versions']['tokenizers']}. "
              f"Load average before / after: {m['load_avg_1min_before_after'][0]} / "
              f"{m['load_avg_1min_before_after'][1]}.",
              f"- Date: {r['date']}.", END]
    return "\n".join(lines) + "\n"


def _with_section(text: str, section: str) -> str:
    if START in text and END in text:
        return re.sub(re.escape(START) + r".*?" + re.escape(END) + r"\n?", lambda _: section, text,
                      flags=re.S)
    return text.rstrip("\n") + "\n\n" + section


if __name__ == "__main__":
    main()
