"""Data preparation speed, side by side in one run (issue 18), and near-duplicate removal on real
license texts against the exact-Jaccard truth.

Rows, each timed in a fresh subprocess on the same text files (the embedded corpus: the stdlib's
`.py` files copied as `.txt`), rounds interleaving the rows and rotating which goes first:

  prepare            the whole `scaletrain prepare` (run_prepare, from the call to its return): N
                     workers, no dedup, the tokenizer trained on its bounded sample
  encode_batch       one raw `tokenizers` `encode_batch` call over the same texts, already in memory,
                     with the tokenizer `prepare` trains (the Rust pool on all N cores)
  encode_batch_fast  the same with `encode_batch_fast` (no offsets; what prepare calls)
  prepare_tokenizer  prepare given that tokenizer (`--tokenizer`), no dedup
  hf                 Hugging Face `datasets`: files read, Dataset.from_dict, .map(batched, num_proc=N),
                     save_to_disk, with the same tokenizer (one Rust thread per map process, as ours)
  hf_default         the same with the tokenizer's default thread pool (N threads in each process)
  prepare_dedup      the whole prepare with exact + near dedup
  ray_1, ray_2       prepare_dedup on the Ray engine, a local Ray of 1 and 2 CPUs (its start-up
                     included); their output must be prepare_dedup's bytes (hashes, `data verify`)

`prepare` trains the same tokenizer in every run (a deterministic sample): it is trained once before
the rounds and given to the rows that take one; every prepare row checks that it got the same one.
Ratios are taken within each round (the machine may be shared), then the median over rounds:
  prepare_vs_encode_batch.ratio = tokens/s of prepare / tokens/s of encode_batch      (target >= 1.0)
  prepare_speedup_vs_hf.speedup = tokens/s of prepare_tokenizer / tokens/s of hf     (target >= 1.5)
(prepare's tokens exclude its end-of-text tokens.)

Also measured: near duplicates removed by prepare on every license text found on this machine
(/usr/share/common-licenses and the site-packages' LICENSE/COPYING files; nothing is downloaded)
against the truth (exact Jaccard of the same word 5-gram shingles, the same threshold, clusters of
the pairs at or above it), target within +-20 %; and the figures docs/data.md's "scale on paper"
formulas are checked against (intermediate bytes, dedup rows, a worker's peak memory at two task
sizes).

    python benchmarks/data.py                      # ~15 min on 2 cores: docs/results/data.json + docs/data.md
    python benchmarks/data.py --quick --results /tmp/data.json --doc /tmp/data.md   # a smoke run
    python benchmarks/data.py --render             # rewrite the docs section from the results only
Needs `pip install -e '.[bench,ray]'`.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

RESULTS = ROOT / "docs" / "results" / "data.json"
DOC = ROOT / "docs" / "data.md"
START, END = "<!-- data-bench:start -->", "<!-- data-bench:end -->"
ROWS = ["prepare", "encode_batch", "encode_batch_fast", "prepare_tokenizer", "hf", "hf_default", "prepare_dedup",
        "ray_1", "ray_2"]
LABELS = {
    "prepare": "`prepare`, whole (no dedup, tokenizer trained)",
    "encode_batch": "one raw `encode_batch`, texts in memory",
    "encode_batch_fast": "one raw `encode_batch_fast`, texts in memory",
    "prepare_tokenizer": "`prepare --tokenizer` (no dedup)",
    "hf": "HF `datasets` `.map(num_proc=N)` + `save_to_disk`, one Rust thread per process",
    "hf_default": "the same with the tokenizer's default threads (N per process)",
    "prepare_dedup": "`prepare`, whole, exact + near dedup",
    "ray_1": "`prepare --engine ray`, 1 CPU, dedup (Ray start included)",
    "ray_2": "`prepare --engine ray`, 2 CPUs, dedup (Ray start included)",
}


# ---- children: one timed run each, in a fresh interpreter --------------------------------------

def _cpu() -> float:
    """CPU seconds of this process, of its children that have ended (a pool's, once shut down) and of
    the fork server the local engine's workers come from (alive until this process ends)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def _texts(src: Path) -> list[str]:
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(src.rglob("*.txt"))]


def _output_hash(out: Path) -> str:
    import xxhash

    h = xxhash.xxh3_128()
    for p in sorted(out.iterdir()):
        if p.is_file() and p.name != "stats.json":
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def child(row: str, src: Path, tok: Path, out: Path, workers: int, task_bytes: int | None, vocab: int) -> dict:
    if row.startswith("encode_batch"):
        from tokenizers import Tokenizer

        texts = _texts(src)  # before the clock: "over the same texts in memory"
        tokenizer = Tokenizer.from_file(str(tok))
        t0, c0 = time.perf_counter(), _cpu()
        encodings = getattr(tokenizer, row)(texts)
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
        return {"tokens": sum(len(e.ids) for e in encodings), "documents": len(texts), "seconds": seconds,
                "cpu_seconds": cpu}
    if row.startswith("hf"):
        return _hf(src, tok, out, workers)
    from scaletrain.data import shards
    from scaletrain.data.pipeline import run_prepare
    from scaletrain.data.prepare_config import validate
    from scaletrain.data.tokenizer import load_tokenizer, tokenizer_fingerprint

    dedup = row in ("prepare_dedup", "ray_1", "ray_2", "scale")
    settings = {"sources": [{"path": str(src), "pattern": "**/*.txt"}], "dedup": {"exact": dedup, "near": dedup},
                "vocab_size": vocab}
    if row == "prepare_tokenizer":
        settings["tokenizer"] = str(tok)
    if task_bytes:
        settings["task_bytes"] = task_bytes
    cfg = validate(settings)
    engine = "ray" if row.startswith("ray") else "local"
    n = {"ray_1": 1, "ray_2": 2}.get(row, workers)
    t0, c0 = time.perf_counter(), _cpu()
    stats = run_prepare(cfg, out, workers=n, progress=False, engine=engine)
    seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"tokens": stats["tokens"] - stats["documents_written"], "documents": stats["documents_out"],
            "seconds": seconds, "phase_seconds": stats["phase_seconds"],
            "cpu_seconds": None if engine == "ray" else cpu,  # (Ray's workers are not our children)
            "worker_peak_rss_bytes": stats["worker_peak_rss_bytes"],
            "driver_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "removed": stats["removed"], "dedup_rows": stats["dedup_rows"], "work_bytes": stats["work_bytes"],
            "bytes_in": stats["bytes_in"], "tasks": stats["tasks"], "near_dedup_pairs": stats["near_dedup_pairs"],
            "documents_in": stats["documents_in"], "documents_written": stats["documents_written"],
            "bands": cfg.dedup.bands, "permutations": cfg.dedup.bands * cfg.dedup.rows,
            "tokenizer_fingerprint": tokenizer_fingerprint(load_tokenizer(out / shards.TOKENIZER)),
            "output_hash": _output_hash(out), "verify_problems": len(shards.verify(out)) if engine == "ray" else None}


def _hf(src: Path, tok: Path, out: Path, workers: int) -> dict:
    import datasets
    from tokenizers import Tokenizer

    datasets.disable_progress_bars()
    os.environ["HF_DATASETS_CACHE"] = str(out / "cache")
    t0, c0 = time.perf_counter(), _cpu()
    texts = _texts(src)
    ds = datasets.Dataset.from_dict({"text": texts})
    tokenizer = Tokenizer.from_file(str(tok))

    def encode(batch):
        return {"ids": [e.ids for e in tokenizer.encode_batch_fast(batch["text"])]}

    mapped = ds.map(encode, batched=True, num_proc=workers, remove_columns=["text"])
    mapped.save_to_disk(str(out / "saved"))
    seconds, cpu = time.perf_counter() - t0, _cpu() - c0  # (its map processes have ended)
    tokens = sum(len(x) for x in mapped["ids"])  # after the clock: counting is not part of the work
    return {"tokens": tokens, "documents": len(texts), "seconds": seconds, "cpu_seconds": cpu}


def _env(row: str, workers: int) -> dict:
    """Each row's thread discipline: prepare sets its own (one Rust thread per worker, all cores for
    the tokenizer's training); a raw encode uses all cores; each HF map process one thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM")}
    env["PYTHONWARNINGS"] = "ignore"
    if row.startswith("encode_batch"):
        env["RAYON_NUM_THREADS"] = str(workers)
    elif row == "hf":
        env["RAYON_NUM_THREADS"] = "1"
    return env


def _run_child(row: str, src: Path, tok: Path, work: Path, workers: int, vocab: int, task_bytes: int | None = None) -> dict:
    out = work / f"out-{row}"
    shutil.rmtree(out, ignore_errors=True)
    args = [sys.executable, __file__, "--child", row, str(src), str(tok), str(out), str(workers), str(task_bytes or 0),
            str(vocab)]
    proc = subprocess.run(args, capture_output=True, text=True, env=_env(row, workers), timeout=3600)
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{row} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["tokens_per_second"] = result["tokens"] / result["seconds"]
    return result


# ---- near duplicates on real license texts --------------------------------------------------------

def license_files() -> list[Path]:
    """Every license text on this machine we can find, once each (by real path), sorted."""
    roots = ["/usr/share/common-licenses"] + sorted({p for p in sys.path if p.endswith("site-packages")})
    found = set()
    for root in roots:
        if not os.path.isdir(root):
            continue
        common = root.startswith("/usr/share")
        for path in glob.glob(os.path.join(root, "**", "*"), recursive=True):
            name = os.path.basename(path).upper()
            if os.path.isfile(path) and (common or "LICEN" in name or name.startswith("COPYING")):
                found.add(os.path.realpath(path))
    return [Path(p) for p in sorted(found)]


def licenses(work: Path, tok: Path) -> dict:
    import numpy as np

    from scaletrain.data import dedup, minhash
    from scaletrain.data.pipeline import run_prepare
    from scaletrain.data.prepare_config import validate

    src = work / "licenses"
    src.mkdir()
    docs = []
    for p in license_files():
        data = p.read_bytes()
        if not data.strip() or b"\0" in data[:4096] or len(data) > 1 << 20:
            continue
        (src / f"{len(docs):05d}.txt").write_bytes(data)
        docs.append(unicodedata.normalize("NFC", data.decode("utf-8", errors="replace")))
    cfg = validate({"sources": [{"path": str(src)}], "tokenizer": str(tok), "val_fraction": 0.0})
    stats = run_prepare(cfg, work / "licenses-out", workers=os.cpu_count() or 1, progress=False)
    threshold = minhash.threshold(cfg.dedup.bands, cfg.dedup.rows)
    # The truth: exact duplicates first (as prepare), then clusters of the remaining documents joined
    # by every pair whose exact Jaccard (same shingles) reaches the threshold.
    first = {}
    distinct = [i for i, d in enumerate(docs) if first.setdefault(d, i) == i]
    sets = [minhash.shingles(docs[i], cfg.dedup.ngram) for i in distinct]
    edges = []
    for a in range(len(sets)):
        for b in range(a + 1, len(sets)):
            x, y = sets[a], sets[b]
            if len(x) and len(y) and min(len(x), len(y)) / max(len(x), len(y)) >= threshold:  # J <= |small|/|big|
                if minhash.exact_jaccard(x, y) >= threshold:
                    edges.append((a, b))
    roots = dedup.min_label(len(sets), np.array(edges, np.int64).reshape(-1, 2))
    truth = int((roots != np.arange(len(sets))).sum())
    found = stats["removed"]["near_dedup"]
    return {"documents": len(docs), "bytes": sum(len(d.encode()) for d in docs),
            "exact_removed": stats["removed"]["exact_dedup"], "exact_truth": len(docs) - len(distinct),
            "near_removed": found, "near_truth": truth, "truth_pairs": len(edges),
            "candidate_pairs": stats["near_dedup_pairs"]["candidate"],
            "verified_pairs": stats["near_dedup_pairs"]["verified"],
            "ratio": found / truth if truth else None, "threshold": threshold,
            "within_20_percent": bool(truth and abs(found / truth - 1) <= 0.2),
            "sources": "/usr/share/common-licenses and LICENSE*/COPYING* files of the site-packages"}


# ---- the run -----------------------------------------------------------------------------------

def _corpus(dst: Path, max_bytes: int | None) -> list[Path]:
    """The embedded corpus (or a deterministic spread-out subset of it), copied as .txt files."""
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


def _ratios(rounds: list[dict], a: str, b: str) -> list[float]:
    return [r[a]["tokens_per_second"] / r[b]["tokens_per_second"] for r in rounds]


def measure(args) -> dict:
    from scaletrain import provenance
    from scaletrain.data import shards
    from scaletrain.data.pipeline import run_prepare
    from scaletrain.data.prepare_config import MiB, validate
    from scaletrain.hardware import machine_info

    workers = args.workers or os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        src = work / "src"
        files = _corpus(src, int(args.mb * 1e6) if args.mb else None)
        # The tokenizer every prepare row trains (deterministic): trained once, given to the others.
        run_prepare(validate({"sources": [{"path": str(src), "pattern": "**/*.txt"}], "vocab_size": args.vocab_size,
                              "dedup": {"exact": False, "near": False}}), work / "setup", progress=False)
        tok = work / "tokenizer.json"
        shutil.copyfile(work / "setup" / shards.TOKENIZER, tok)
        setup_tokenizer = shards.read_manifest(work / "setup")["tokenizer_fingerprint"]
        shutil.rmtree(work / "setup")
        load_before = os.getloadavg()[0]
        rounds = []
        for r in range(args.rounds):
            order = ROWS[r % len(ROWS):] + ROWS[: r % len(ROWS)]
            results = {row: _run_child(row, src, tok, work, workers, args.vocab_size) for row in order}
            rounds.append(results)
            print(f"round {r + 1}: " + ", ".join(f"{row} {results[row]['tokens_per_second'] / 1e6:.2f}M tok/s"
                                                for row in ROWS), flush=True)
        load_after = os.getloadavg()[0]
        # Scale on paper: the same dedup run at two task sizes (peak memory of a worker, bytes).
        scale = {str(tb): _run_child("scale", src, tok, work, workers, args.vocab_size, tb) for tb in (1 * MiB, 4 * MiB)}
        lic = licenses(work, tok)
        nbytes = sum(p.stat().st_size for p in files)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    fingerprints = {r["prepare"]["tokenizer_fingerprint"] for r in rounds} | {setup_tokenizer}
    dedup_hashes = {r[row]["output_hash"] for r in rounds for row in ("prepare_dedup", "ray_1", "ray_2")}
    rows = {}
    for row in ROWS:
        tps = [r[row]["tokens_per_second"] for r in rounds]
        rows[row] = {"label": LABELS[row], "tokens_per_second_median": statistics.median(tps),
                     "tokens_per_second": tps, "seconds": [r[row]["seconds"] for r in rounds],
                     "cpu_seconds": [r[row].get("cpu_seconds") for r in rounds],
                     "tokens": rounds[0][row]["tokens"], "documents": rounds[0][row]["documents"],
                     "phase_seconds": [r[row].get("phase_seconds") for r in rounds]}
    machine = machine_info()
    # The same provenance as every other figure: "dirty" means uncommitted code, not the docs that
    # the benchmarks themselves rewrite.
    stamp = {"git_commit": provenance.git_commit(), "git_dirty": provenance.git_dirty(),
             "timestamp": provenance.timestamp(), "cpu_flags": machine["cpu_flags"]}
    encode_ratio = _ratios(rounds, "prepare", "encode_batch")
    hf_ratio = _ratios(rounds, "prepare_tokenizer", "hf")
    return {
        "prepare_vs_encode_batch": {
            "ratio": statistics.median(encode_ratio), "target": 1.0, "rounds": encode_ratio,
            "ratio_vs_encode_batch_fast": statistics.median(_ratios(rounds, "prepare", "encode_batch_fast")),
            "definition": "tokens/s of the whole scaletrain prepare (no dedup, tokenizer training included; "
                          "end-of-text tokens not counted) / tokens/s of one raw tokenizers encode_batch call over "
                          "the same texts in memory with the same trained tokenizer, median over interleaved rounds",
            **stamp},
        "prepare_speedup_vs_hf": {
            "speedup": statistics.median(hf_ratio), "target": 1.5, "rounds": hf_ratio,
            "definition": f"tokens/s of scaletrain prepare --tokenizer (no dedup, {workers} workers) / tokens/s of "
                          f"HF datasets from_dict + map(batched, num_proc={workers}) + save_to_disk, same tokenizer, "
                          "median over interleaved rounds",
            **stamp},
        "prepare_benchmark": {
            "rows": rows, "workers": workers, "rounds": args.rounds,
            "corpus": {"files": len(files), "bytes": nbytes, "source": "Python standard library .py files"},
            "vocab_size": args.vocab_size,
            "same_tokenizer_in_every_prepare": len(fingerprints) == 1,  # so encode_batch and hf got prepare's
            "prepare_dedup_same_tokenizer_in_every_round": len({r["prepare_dedup"]["tokenizer_fingerprint"]
                                                                for r in rounds}) == 1,
            "ray_output_identical_to_local": len(dedup_hashes) == 1,
            "ray_verify_problems": sum(r[row]["verify_problems"] for r in rounds for row in ("ray_1", "ray_2")),
            "near_dedup_licenses": lic, "scale": scale,
            "machine": machine, "load_avg_1min_before_after": [load_before, load_after],
            "command": "python benchmarks/data.py " + " ".join(sys.argv[1:]), **stamp},
    }


# ---- docs/data.md ------------------------------------------------------------------------------

def scale_check(scale: dict) -> dict:
    """docs/data.md's formulas for the intermediate bytes, evaluated on the measured run's counts
    (documents, cleaned bytes, dedup rows, tokens), next to the bytes it wrote; and the worker
    memory line R0 + alpha * task_bytes through the two task sizes."""
    (t1, a), (t2, z) = sorted((int(k) / 2**20, v) for k, v in scale.items())
    docs, tasks = z["documents_in"], z["tasks"]
    rows = z["dedup_rows"]["exact"] + z["dedup_rows"]["band"]
    predicted = [("cleaned text", z["bytes_in"], z["work_bytes"]["text"]),
                 ("signatures (4·k·D)", 4 * z["permutations"] * docs, z["work_bytes"]["signatures"]),
                 ("dedup rows (24·D·(1+b))", 24 * rows, z["work_bytes"]["dedup_rows"])]
    m1, m2 = a["worker_peak_rss_bytes"] / 2**20, z["worker_peak_rss_bytes"] / 2**20
    alpha = (m2 - m1) / (t2 - t1)
    return {"bytes": predicted, "tasks": tasks,
            "rss": [(t1, m1), (t2, m2)], "alpha": alpha, "r0": m1 - alpha * t1}


def _table(res: dict) -> str:
    e, h, b = res["prepare_vs_encode_batch"], res["prepare_speedup_vs_hf"], res["prepare_benchmark"]
    rows, c, lic = b["rows"], b["corpus"], b["near_dedup_licenses"]
    lines = [START, "### Measured", "",
             f"`python benchmarks/data.py` on {c['files']:,} files, {c['bytes'] / 1e6:.1f} MB ({c['source']}), "
             f"{b['workers']} workers, {b['rounds']} interleaved rounds, each row a fresh process:", "",
             "| row | tokens/s (median) | min – max | seconds (median) |", "|---|---:|---|---:|"]
    for name in ROWS:
        r = rows[name]
        tps = r["tokens_per_second"]
        lines.append(f"| {r['label']} | {r['tokens_per_second_median'] / 1e6:.2f} M | {min(tps) / 1e6:.2f} – "
                     f"{max(tps) / 1e6:.2f} M | {statistics.median(r['seconds']):.1f} |")
    check = scale_check(b["scale"])
    lines += [
        "",
        f"- Whole `prepare` ÷ one raw `encode_batch`: **{e['ratio']:.2f}×** (target ≥ {e['target']}; per round "
        f"{', '.join(f'{x:.2f}' for x in e['rounds'])}); against `encode_batch_fast`: {e['ratio_vs_encode_batch_fast']:.2f}×.",
        f"- `prepare --tokenizer` ÷ HF `datasets`: **{h['speedup']:.2f}×** (target ≥ {h['target']}; per round "
        f"{', '.join(f'{x:.2f}' for x in h['rounds'])}).",
        f"- Ray engine: output {'byte-identical to' if b['ray_output_identical_to_local'] else 'DIFFERENT from'} "
        f"the local engine's (hashes of every file), `data verify` problems: {b['ray_verify_problems']}; every "
        f"prepare trained the same tokenizer: {b['same_tokenizer_in_every_prepare']}.",
        f"- Near duplicates on {lic['documents']} license texts found on the machine ({lic['sources']}; "
        f"{lic['bytes'] / 1e6:.1f} MB): prepare removed {lic['near_removed']} near duplicates, the exact-Jaccard "
        f"truth at the same threshold ({lic['threshold']:.2f}) has {lic['near_truth']} "
        f"(**{lic['ratio']:.2f}×**, {'within' if lic['within_20_percent'] else 'NOT within'} ±20 %); exact "
        f"duplicates {lic['exact_removed']} (truth {lic['exact_truth']}).",
        f"- Scale check (dedup on, {b['workers']} workers, the formulas of \"Scale on paper\" against the run): "
        + "; ".join(f"{name} {pred / 1e6:.2f} MB predicted, {meas / 1e6:.2f} MB measured" for name, pred, meas
                    in check["bytes"]) + f"; a worker's peak memory {check['rss'][0][1]:.0f} MiB with "
        f"{check['rss'][0][0]:.0f} MiB tasks, {check['rss'][1][1]:.0f} MiB with {check['rss'][1][0]:.0f} MiB tasks: "
        f"R0 + α·task with R0 = {check['r0']:.0f} MiB, α = {check['alpha']:.1f}.",
        f"- Machine: {b['machine']['cpu_model']}, {b['machine']['logical_cores']} logical cores, flags "
        f"{', '.join(k for k, v in b['cpu_flags'].items() if v) or 'none of AVX2/AVX512-BF16/AMX/VNNI'}; "
        f"load average before / after {b['load_avg_1min_before_after'][0]:.2f} / "
        f"{b['load_avg_1min_before_after'][1]:.2f}.",
        f"- Commit {b['git_commit']}{' (with uncommitted changes)' if b.get('git_dirty') else ''}, {b['timestamp']}; raw figures in [results/data.json](results/data.json) "
        "(`prepare_vs_encode_batch`, `prepare_speedup_vs_hf`, `prepare_benchmark`).",
        END]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=None, help="corpus size in MB (default: the whole stdlib)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="default: every core")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 4 MB, 1 round")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--doc", type=Path, default=DOC)
    ap.add_argument("--render", action="store_true", help="rewrite the docs section from --results only")
    ap.add_argument("--child", nargs=7, metavar=("ROW", "SRC", "TOK", "OUT", "WORKERS", "TASK_BYTES", "VOCAB"))
    args = ap.parse_args()
    if args.child:
        row, src, tok, out, workers, task_bytes, vocab = args.child
        print(json.dumps(child(row, Path(src), Path(tok), Path(out), int(workers), int(task_bytes) or None, int(vocab))))
        return
    from docs_out import merge_results, write_section

    if not args.render:
        if args.quick:
            args.mb, args.rounds = args.mb or 4.0, 1
        merge_results(args.results, measure(args))
    res = json.loads(args.results.read_text())
    write_section(args.doc, START, END, _table(res), after="<!-- data-bench:here -->")
    print(f"prepare / encode_batch: {res['prepare_vs_encode_batch']['ratio']:.2f}x, "
          f"prepare / HF datasets: {res['prepare_speedup_vs_hf']['speedup']:.2f}x; wrote {args.results}, {args.doc}")


if __name__ == "__main__":
    main()
