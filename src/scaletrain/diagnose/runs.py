"""`scaletrain runs DIR...`: the runs side by side. One row per run folder from its summary.json
(or, for a run that has not finished, its last logged step), and one plot of their validation
curves. Every file is read as doctor reads it (scaletrain.diagnose.doctor.load_run: summary.json
through scaletrain.untrusted, metrics.jsonl record by record, damaged lines set aside).
"""

from __future__ import annotations

import math
from pathlib import Path

from scaletrain.diagnose.doctor import Run, load_run
from scaletrain.errors import UserError

# The table's columns: (header, key of the row).
COLUMNS = (("run", "name"), ("steps", "steps"), ("train loss", "train_loss"), ("val loss", "val_loss"),
           ("val acc/bpb", "quality"), ("units/s", "throughput"), ("MFU", "mfu"), ("wall", "wall_seconds"),
           ("stopped by", "stopped_by"))


def _number(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def read_run(path: Path | str) -> tuple[dict, Run]:
    """(row, parsed run) of one run folder; UserError naming the folder when it is not one."""
    try:
        run = load_run(path)
    except UserError as exc:
        raise UserError(str(exc).replace("doctor: ", "runs: ", 1)) from None
    s = run.summary
    last_train = run.train[-1] if run.train else {}
    unit = "tokens" if "tokens_per_second" in s or "tokens_per_second" in last_train else "samples"
    val = [r for r in run.val if _number(r.get("val_loss")) is not None]
    row = {
        "name": Path(path).name or str(path),
        "path": str(path),
        "finished": bool(s),
        "steps": _number(s.get("steps")) if s else _number(last_train.get("step")),
        "train_loss": _number(s.get("train_loss")) if s else _number(last_train.get("loss")),
        "val_loss": _number(s.get("val_loss")) if s else (_number(val[-1]["val_loss"]) if val else None),
        "val_accuracy": _number(s.get("val_accuracy")),
        "val_bpb": _number(s.get("val_bpb")),
        "unit": unit,
        "throughput": _number(s.get(f"{unit}_per_second")),
        "mfu": _number(s.get("mfu")),
        "wall_seconds": _number(s.get("wall_seconds")),
        "best_step": _number(s.get("best_step")),
        "stopped_by": s.get("stopped_by") if isinstance(s.get("stopped_by"), str) else None,
    }
    for key in ("steps", "best_step"):
        if row[key] is not None and math.isfinite(row[key]):
            row[key] = int(row[key])
    return row, run


def _fmt(key: str, row: dict) -> str:
    v = row.get(key)
    if key == "quality":
        acc, bpb = row.get("val_accuracy"), row.get("val_bpb")
        return f"{100 * acc:.2f} %" if acc is not None else f"{bpb:.3f} bpb" if bpb is not None else "-"
    if v is None:
        return "-" if key != "stopped_by" or row["finished"] else "(running)"
    if key in ("train_loss", "val_loss"):
        return f"{v:.4f}" if math.isfinite(v) else str(v)
    if key == "throughput":
        return f"{v:,.0f} {'tok' if row['unit'] == 'tokens' else 'samples'}/s"
    if key == "mfu":
        return f"{100 * v:.1f} %"
    if key == "wall_seconds":
        return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"
    return str(v)


def table(rows: list[dict]) -> str:
    """The rows as an aligned plain-text table."""
    cells = [[h for h, _ in COLUMNS]] + [[_fmt(k, r) for _, k in COLUMNS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_validation(runs: list[tuple[dict, Run]], out: Path) -> None:
    """One PNG: each run's validation loss against the step (one value per step: the final
    evaluation repeats the last step on the whole split)."""
    from matplotlib.figure import Figure

    from scaletrain.atomic import atomic_open

    fig = Figure(figsize=(9, 5.5), dpi=110, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    drawn, values = 0, []
    for row, run in runs:
        by_step: dict[int, float] = {}
        for r in run.val:
            v = _number(r.get("val_loss"))
            if v is not None and math.isfinite(v):
                by_step.setdefault(int(r["step"]), v)  # the step's first: the weights trained to it
        if by_step:
            steps = sorted(by_step)
            ax.plot(steps, [by_step[s] for s in steps], marker="o", markersize=3, linewidth=1.5, label=row["name"])
            drawn += 1
            values += [v for v in by_step.values() if v > 0]
    if values and max(values) > 20 * min(values):  # runs of different tasks: each visible
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.set_title(f"validation loss of {len(runs)} run(s)")
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize="small")
    with atomic_open(out, "wb") as f:
        fig.savefig(f, format="png")
