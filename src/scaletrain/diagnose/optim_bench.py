"""`scaletrain bench optim`: every optimizer on the same task and budget, each at its best lr.

For each task (the MLP on digits, the tiny GPT) and each registry entry, train the preset for the
same number of steps at 3 learning rates (a factor 3 apart around a per-optimizer centre: sign-
and trust-ratio methods live at other scales than Adam) and keep the run with the lowest final
validation loss. The figures come from the runs themselves: final train/val loss from the run's
summary, ms per step = the trainer's training seconds (evaluation and checkpoints excluded) /
steps, optimizer state bytes per parameter measured from the state tensors after one step.

`gd` (one step per pass over the whole training set) is not benchmarked: with the same step
budget it would cost an epoch per step, and its update rule is `sgd`'s.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch

from scaletrain.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from scaletrain.errors import UserError

TASKS = {"mlp": "mlp-digits", "gpt-tiny": "gpt-tiny"}
DEFAULT_STEPS = {"mlp": 300, "gpt-tiny": 150}
# Centre of the 3-point lr sweep (x 1/3, 1, 3), per task: found by hand on a few short runs.
CENTRE = {
    "mlp": {"sgd": 0.3, "momentum": 0.03, "nesterov": 0.03, "adagrad": 0.03, "rmsprop": 1e-3,
            "adam": 3e-3, "adamw": 3e-3, "lamb": 0.01, "lars": 3.0, "lion": 1e-3, "muon": 0.01,
            "adafactor": 0.03, "adamw8bit": 3e-3},
    "gpt-tiny": {"sgd": 0.3, "momentum": 0.1, "nesterov": 0.1, "adagrad": 0.03, "rmsprop": 1e-3,
                 "adam": 3e-3, "adamw": 3e-3, "lamb": 0.01, "lars": 3.0, "lion": 1e-3, "muon": 3e-3,
                 "adafactor": 0.03, "adamw8bit": 3e-3},
}
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
COMMON = ["log.progress=false", "log.trackers=[]", "log.sample_tokens=0", "train.eval_every=0",
          "train.checkpoint_every=0", "train.threads=1", "train.precision=fp32", "log.every=10"]


def _state_bytes_per_param(cfg) -> float:
    """Build the run's model and optimizer, take one step on random gradients, measure the state."""
    from scaletrain.models import build_model
    from scaletrain.optim.memory import state_bytes_per_param
    from scaletrain.optim.registry import build_from_config
    from scaletrain.train.build import build_task

    _, args, _, _ = build_task(cfg, torch.device("cpu"))
    model = build_model(cfg.model.name, args)
    opt = build_from_config(model, cfg.optim)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    return state_bytes_per_param(opt)


def _run(preset: str, name: str, lr: float, steps: int, run_dir: Path, cache_dir: str | None) -> dict:
    from scaletrain.config.load import load_config
    from scaletrain.train.build import build_trainer

    extra = [f"data.cache_dir={cache_dir}"] if cache_dir else []
    cfg = load_config(preset, [*COMMON, *extra, f"optim.name={name}", f"optim.lr={lr}",
                               f"train.max_steps={steps}", f"train.run_dir={run_dir}"])
    with contextlib.redirect_stdout(io.StringIO()):  # the runs' own log lines: only the table matters
        summary = build_trainer(cfg).fit()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [[r["step"], r["loss"]] for r in records if r.get("split") == "train"]
    return {"lr": lr, "cfg": cfg, "curve": curve, "train_loss": summary["train_loss"],
            "val_loss": summary["val_loss"], "ms_per_step": 1000 * summary["train_seconds"] / summary["steps"],
            "steps": summary["steps"]}


def bench(tasks: list[str], steps: int | None, out: Path, names: list[str] | None = None,
          cache_dir: str | None = None, log=print) -> dict:
    from scaletrain.hardware import machine_info
    from scaletrain.optim.registry import available

    names = names or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        raise UserError(f"--optimizers: unknown {unknown}; known: {available()}")
    torch.set_num_threads(1)
    results: dict = {"machine": machine_info(), "date": _dt.date.today().isoformat(),
                     "versions": _versions(), "tasks": {}}
    tmp = Path(tempfile.mkdtemp(prefix="scaletrain-bench-optim-"))
    try:
        for task in tasks:
            task_steps = steps or DEFAULT_STEPS[task]
            rows = {}
            for name in names:
                if name not in CENTRE[task]:
                    log(f"{task}: {name} skipped (not in this benchmark; see the module docstring)")
                    continue
                began = time.perf_counter()
                runs = []
                for k, factor in enumerate((1 / 3, 1.0, 3.0)):
                    lr = float(f"{CENTRE[task][name] * factor:.3g}")
                    runs.append(_run(TASKS[task], name, lr, task_steps, tmp / f"{task}-{name}-{k}", cache_dir))
                finite = [r for r in runs if r["val_loss"] == r["val_loss"] and r["val_loss"] < float("inf")]
                best = min(finite or runs, key=lambda r: r["val_loss"])
                rows[name] = {
                    "lr": best["lr"], "lrs_tried": [r["lr"] for r in runs],
                    "val_losses_tried": [r["val_loss"] for r in runs],
                    "final_train_loss": best["train_loss"], "final_val_loss": best["val_loss"],
                    "ms_per_step": best["ms_per_step"], "steps": best["steps"],
                    "state_bytes_per_param": _state_bytes_per_param(best["cfg"]),
                    "curve": best["curve"],
                }
                log(f"{task}: {name:9s} lr {best['lr']:<8g} val {best['val_loss']:.4f} "
                    f"{best['ms_per_step']:.2f} ms/step ({time.perf_counter() - began:.0f} s)")
            results["tasks"][task] = {"preset": TASKS[task], "steps": task_steps, "optimizers": rows}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_outputs(results, out)
    return results


def _versions() -> dict:
    import scaletrain

    v = {"scaletrain": scaletrain.__version__, "torch": torch.__version__}
    from importlib import metadata

    try:  # the [bnb] extra: recorded when installed (its rows are skipped otherwise)
        v["bitsandbytes"] = metadata.version("bitsandbytes")
    except metadata.PackageNotFoundError:
        pass
    return v


def _flat(results: dict) -> dict:
    """docs/results/optim.json: keyed by optimizer name (then task), the issue's three figures first."""
    by_name: dict = {}
    for task, t in results["tasks"].items():
        for name, row in t["optimizers"].items():
            by_name.setdefault(name, {})[task] = {k: v for k, v in row.items() if k != "curve"}
    return by_name


def write_outputs(results: dict, out: Path) -> None:
    out = Path(out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    from scaletrain.provenance import stamp

    raw = {**stamp("scaletrain bench optim"),
           "machine": results["machine"], "date": results["date"], "versions": results["versions"],
           "steps": {task: t["steps"] for task, t in results["tasks"].items()},
           "optimizers": _flat(results),
           "curves": {task: {n: r["curve"] for n, r in t["optimizers"].items()}
                      for task, t in results["tasks"].items()}}
    write_json_atomic(out / "results" / "optim.json", raw)
    _plot(results, out / "optimizers-loss.png")
    doc = out / "optimizers.md"
    table = _table(results)
    text = doc.read_text() if doc.exists() else f"# Optimizers\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: f"{START}\n{table}\n{END}", text, flags=re.S)
    write_text_atomic(doc, text)


def _table(results: dict) -> str:
    m = results["machine"]
    lines = [f"Measured on {results['date']} by `scaletrain bench optim` ({m['cpu_model']}, "
             f"{m['logical_cores']} cores, 1 torch thread per run; torch {results['versions']['torch']}"
             + (f", bitsandbytes {results['versions']['bitsandbytes']}" if "bitsandbytes" in results["versions"] else "")
             + "). Each optimizer at the best of 3 learning rates (a factor 3 apart); state bytes per "
             "parameter measured from the optimizer's state tensors. Raw figures: "
             "[results/optim.json](results/optim.json).", "", "![loss curves](optimizers-loss.png)", ""]
    for task, t in results["tasks"].items():
        lines += [f"**{task}** (`{t['preset']}` preset, {t['steps']} steps, its own schedule and batch):", "",
                  "| optimizer | best lr | final train loss | final val loss | ms / step | state bytes / param |",
                  "|---|---|---|---|---|---|"]
        rows = sorted(t["optimizers"].items(), key=lambda kv: kv[1]["final_val_loss"])
        for name, r in rows:
            lines.append(f"| {name} | {r['lr']:g} | {r['final_train_loss']:.4f} | {r['final_val_loss']:.4f} | "
                         f"{r['ms_per_step']:.2f} | {r['state_bytes_per_param']:.2f} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def _plot(results: dict, path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name, r in sorted(results["tasks"][task]["optimizers"].items()):
            steps, losses = zip(*r["curve"]) if r["curve"] else ((), ())
            ax.plot(steps, losses, label=f"{name} (lr {r['lr']:g})", linewidth=1.2)
        ax.set_title(f"{task}: train loss at each optimizer's best lr")
        ax.set_xlabel("step")
        ax.set_ylabel("train loss (mean over 10 steps)")
        ax.set_yscale("log")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
