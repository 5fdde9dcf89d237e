"""Faster per token and per second: each recipe lever against the main job's preset, same budget.

Every run is `scaletrain train gpt` with its time budget (`schedule.budget=time`) set to
`--budget-seconds`, so that a lever that makes steps slower pays for it in steps: what is compared
is the quality reached in the same wall-clock time on this machine. Each lever runs once per seed
(`--seeds`, default 2); the order alternates (seed 1: the list in order, seed 2: reversed, ...), so
a drift of the machine hits every lever alike, and the baseline (the preset as is) runs with every
seed. Evaluation: no intermediate evaluations or checkpoints, no sample, a final evaluation on
`--eval-batches` evenly spread batches of the validation split (inside the budget).

The verdict is computed: a lever **wins** when its val_bpb is below the baseline's by at least
`--margin` bits per byte with every seed (same seed against same seed); it **loses** when it is
above by the margin with every seed; otherwise the difference is within noise ("unclear"). Its
tokens/s against the baseline's is reported beside it (a speed lever, such as `train.compile`, wins
only through the quality its extra steps buy).

Writes docs/results/main_job.json (every run, stamped with git commit, time and CPU flags) and the
lever table of docs/main_job.md (between `<!-- levers:start -->` and `<!-- levers:end -->`). It
changes no preset: adopting a winner is a separate, reviewed change.

    python benchmarks/recipe_sweep.py                         # 13 levers x 2 seeds x 90 s: ~50 minutes
    python benchmarks/recipe_sweep.py --budget-seconds 10 --levers baseline,qk_norm --seeds 1   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
START, END = "<!-- levers:start -->", "<!-- levers:end -->"
PRESET = "gpt"

# (key, what, overrides). The baseline is the preset as shipped (its precision chosen by this machine).
LEVERS = [
    ("baseline", "the `gpt` preset as is", []),
    ("muon", "Muon for the hidden matrices, AdamW for embeddings, head and gains (`optim.name=muon`)",
     ["optim.name=muon"]),
    ("qk_norm", "QK-norm (`model.qk_norm=true`)", ["model.qk_norm=true"]),
    ("gelu", "GELU in the MLP instead of the preset's ReLU² (`model.activation=gelu`)", ["model.activation=gelu"]),
    ("untied", "untied output head (`model.tie_embeddings=false`)", ["model.tie_embeddings=false"]),
    ("batch8", "batch 8 with a √2 higher learning rate (`train.batch_size=8 optim.lr=5.66e-3`)",
     ["train.batch_size=8", "optim.lr=5.66e-3"]),
    ("batch8_muon", "batch 8 with Muon (`train.batch_size=8 optim.name=muon`: its Newton-Schulz cost per token halves)",
     ["train.batch_size=8", "optim.name=muon"]),
    ("lr6e-3", "a 1.5x higher learning rate (`optim.lr=6e-3`)", ["optim.lr=6e-3"]),
    ("cosine", "a cosine to zero instead of the preset's WSD (`schedule.name=cosine`)",
     ["schedule.name=cosine", "schedule.min_lr_ratio=0"]),
    ("lr_high", "a 1.5x higher learning rate with QK-norm (`optim.lr=6e-3 model.qk_norm=true`)",
     ["optim.lr=6e-3", "model.qk_norm=true"]),
    ("compile", "torch.compile (`train.compile=true`; its compilation is inside the budget)",
     ["train.compile=true"]),
    ("muon_untied", "Muon + untied head together", ["optim.name=muon", "model.tie_embeddings=false"]),
    ("speedrun", "Muon + QK-norm + untied head together (with the preset's ReLU²: the speedrun's recipe)",
     ["optim.name=muon", "model.qk_norm=true", "model.tie_embeddings=false"]),
]
QUIET = ["log.progress=false", "log.sample_tokens=0", "log.tensorboard=false", "train.eval_every=0",
         "train.checkpoint_every=0", "schedule.budget=time"]


def child_env(work: Path, key: str, seed: int) -> dict:
    path = os.pathsep.join(x for x in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if x)
    return {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": path,
            "TORCHINDUCTOR_CACHE_DIR": str(work / f"inductor-{key}-{seed}")}  # every compile run compiles cold


def run(key: str, overrides: list[str], seed: int, budget_s: float, eval_batches: int, work: Path) -> dict:
    run_dir = work / f"{key}-{seed}"
    cmd = [sys.executable, "-m", "scaletrain", "train", PRESET, *QUIET, f"train.run_dir={run_dir}",
           f"train.max_minutes={budget_s / 60:.6g}", f"train.seed={seed}",
           f"train.final_eval_batches={eval_batches}", *overrides]
    began = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1800.0, 10 * budget_s), cwd=ROOT,
                          env=child_env(work, key, seed))
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    s = json.loads((run_dir / "summary.json").read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"seed": seed, "val_bpb": s.get("val_bpb"), "val_loss": s["val_loss"],
            "tokens_per_second": s["tokens_per_second"], "steps": s["steps"], "stopped_by": s["stopped_by"],
            "precision": s.get("precision"), "train_seconds": s["train_seconds"], "command_seconds": seconds,
            "parameters": s["parameters"]}


def judge(runs: dict[str, list[dict]], margin: float) -> dict[str, dict]:
    """Each lever against the baseline, seed by seed: wins / loses / unclear (see the docstring)."""
    base = {r["seed"]: r for r in runs["baseline"]}
    out = {}
    for key, rs in runs.items():
        paired = [(r, base[r["seed"]]) for r in rs if r["seed"] in base]
        deltas = [r["val_bpb"] - b["val_bpb"] for r, b in paired]
        speed = [r["tokens_per_second"] / b["tokens_per_second"] for r, b in paired]
        if key == "baseline" or not deltas:
            verdict = "baseline" if key == "baseline" else "not measured"
        elif all(d <= -margin for d in deltas):
            verdict = "wins"
        elif all(d >= margin for d in deltas):
            verdict = "loses"
        else:
            verdict = "unclear"
        out[key] = {"val_bpb": statistics.mean(r["val_bpb"] for r in rs),
                    "delta_bpb": deltas, "tokens_per_second_ratio": speed,
                    "tokens_per_second": statistics.mean(r["tokens_per_second"] for r in rs),
                    "steps": [r["steps"] for r in rs], "verdict": verdict}
    return out


def table(result: dict) -> str:
    stamp = result
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in stamp["cpu_flags"].items())
    lines = [START, "## The levers, measured", "",
             f"Measured {stamp['timestamp']} by `{stamp['script']}` on commit `{(stamp['git_commit'] or 'unknown')[:10]}` "
             f"({stamp['cpu_model']}; {flags}; torch {stamp['torch']}). Each lever trains `scaletrain train gpt` "
             f"with a {result['budget_seconds']:.0f}-second time budget (the step count fitted to it, the final "
             f"evaluation on {result['eval_batches']} spread validation batches inside it), seeds "
             f"{', '.join(map(str, result['seeds']))}, in alternating order. A lever **wins** when its val_bpb is "
             f"below the baseline's by at least {result['margin']} with every seed, **loses** when above by as much, "
             "else the difference is within noise. Raw runs: [results/main_job.json](results/main_job.json).", "",
             "| lever | val_bpb (mean) | Δ val_bpb per seed | tokens/s ÷ baseline per seed | steps per seed | verdict |",
             "|---|---:|---|---|---|---|"]
    for key, what, _ in LEVERS:
        v = result["levers"].get(key)
        if v is None:
            continue
        deltas = " / ".join(f"{d:+.3f}" for d in v["delta_bpb"]) if key != "baseline" else "–"
        speed = " / ".join(f"{x:.2f}" for x in v["tokens_per_second_ratio"]) if key != "baseline" else \
            f"{v['tokens_per_second']:,.0f} tokens/s"
        steps = " / ".join(f"{n:,}" for n in v["steps"])
        mark = {"wins": "**wins**", "loses": "loses"}.get(v["verdict"], v["verdict"])
        lines.append(f"| {what} | {v['val_bpb']:.3f} | {deltas} | {speed} | {steps} | {mark} |")
    winners = [k for k, v in result["levers"].items() if v["verdict"] == "wins"]
    lines += ["", "Winners: " + (", ".join(f"`{k}`" for k in winners) if winners else "none at this budget") +
              ". The preset changes only by a reviewed change that adopts them.", END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-seconds", type=float, default=90.0, help="time budget of every run (default 90)")
    p.add_argument("--seeds", default="1337,1338", help="comma-separated seeds (default 1337,1338)")
    p.add_argument("--levers", default=None, help="comma-separated lever keys (default: all; baseline always)")
    p.add_argument("--margin", type=float, default=0.01, help="bits per byte a lever must win by (default 0.01)")
    p.add_argument("--eval-batches", type=int, default=16, help="final evaluation batches (default 16)")
    a = p.parse_args(argv)
    command = " ".join(["python benchmarks/recipe_sweep.py", *(sys.argv[1:] if argv is None else argv)])
    from docs_out import write_results, write_section
    from nanogpt_loop import preset_shape

    chosen = set(a.levers.split(",")) | {"baseline"} if a.levers else {k for k, *_ in LEVERS}
    unknown = chosen - {k for k, *_ in LEVERS}
    if unknown:
        p.error(f"unknown lever(s) {sorted(unknown)}; known: {[k for k, *_ in LEVERS]}")
    order = [lever for lever in LEVERS if lever[0] in chosen]
    seeds = [int(s) for s in a.seeds.split(",")]
    preset_shape(PRESET)  # the data prepared once, outside every run's budget
    work = Path(tempfile.mkdtemp(prefix="scaletrain-sweep-"))
    runs: dict[str, list[dict]] = {key: [] for key, *_ in order}
    began = time.time()
    try:
        for i, seed in enumerate(seeds):
            for key, what, overrides in (order if i % 2 == 0 else order[::-1]):
                r = run(key, overrides, seed, a.budget_seconds, a.eval_batches, work)
                runs[key].append(r)
                print(f"seed {seed} {key}: val_bpb {r['val_bpb']:.4f}, {r['tokens_per_second']:,.0f} tokens/s, "
                      f"{r['steps']} steps", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"budget_seconds": a.budget_seconds, "seeds": seeds, "margin": a.margin, "eval_batches": a.eval_batches,
              "minutes": round((time.time() - began) / 60, 1),
              "lever_overrides": {key: overrides for key, _, overrides in order},
              "runs": runs, "levers": judge(runs, a.margin)}
    result = write_results(ROOT / "docs" / "results" / "main_job.json", result, script=command)
    block = table(result)
    write_section(ROOT / "docs" / "main_job.md", START, END, block)
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
