"""End-of-run artefacts: metrics reader, loss plot, report.md, and atomic file helpers.

Every final file is written atomically (temp file in the same directory, fsync, os.replace) so a
crash or a concurrent reader never sees a half-written report, plot or JSON file.
"""

from __future__ import annotations

import enum
import json
import math
from pathlib import Path
from typing import Any

import yaml

from scaletrain.atomic import atomic_open, write_json_atomic, write_text_atomic

__all__ = ["read_metrics", "plot_losses", "write_report", "write_json_atomic", "write_text_atomic"]


# --------------------------------------------------------------------------- metrics


def read_metrics(path: Path | str) -> list[dict]:
    """Parse metrics.jsonl. A trailing line that does not parse is skipped (the writer was killed
    mid-line); a bad line in the middle is real corruption and raises ValueError."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    records: list[dict] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: corrupt metrics line: {e}") from e
        if isinstance(rec, dict):
            records.append(rec)
    return records


def _is_val(rec: dict) -> bool:
    return rec.get("split") == "val" or ("split" not in rec and "val_loss" in rec)


def _val_value(rec: dict, name: str) -> Any:
    # Telemetry writes {"split": "val", "loss": ...}; summaries use "val_loss": accept both.
    return rec.get(f"val_{name}", rec.get(name))


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _ema(values: list[float]) -> list[float]:
    """Bias-corrected EMA (as TensorBoard's smoothing) so the first points are not pulled to 0.

    The span scales with the number of points (~1/25 of the run): a fixed 0.9 weight lags far
    behind the raw curve on short runs with few logged points.
    """
    span = max(1.0, len(values) / 25)
    weight = min(0.95, 1 - 2 / (span + 1))
    out, acc = [], 0.0
    for i, v in enumerate(values, start=1):
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight**i))
    return out


def plot_losses(records: list[dict], out_png: Path | str, title: str) -> None:
    """Plot train loss (raw + EMA) and val loss vs step; val accuracy on a second axis if present."""
    # The object-oriented Figure API renders through Agg without touching pyplot's global
    # backend/figure registry, so it is safe headless, inside Jupyter, and from threads.
    from matplotlib.figure import Figure

    train = [(r["step"], v) for r in records if not _is_val(r) and r.get("step") is not None
             and (v := _num(r.get("loss"))) is not None]
    val = [(r["step"], v) for r in records if _is_val(r) and r.get("step") is not None
           and (v := _num(_val_value(r, "loss"))) is not None]
    acc = [(r["step"], v) for r in records if _is_val(r) and r.get("step") is not None
           and (v := _num(_val_value(r, "accuracy"))) is not None]

    fig = Figure(figsize=(9, 5.5 if not acc else 8), dpi=110, layout="constrained")
    ax = fig.add_subplot(2, 1, 1) if acc else fig.add_subplot(1, 1, 1)
    # A single point draws nothing as a line, so add markers when there are few points.
    few = {"marker": "o", "markersize": 3} if len(train) < 3 else {}
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=1, label="train loss", **few)
        ax.plot(steps, _ema(list(losses)), color="tab:blue", linewidth=2,
                label="train loss (EMA)", **few)
    if val:
        steps, losses = zip(*val)
        ax.plot(steps, losses, color="tab:orange", marker="o", markersize=4, linewidth=1.5,
                label="val loss")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    if train or val:
        ax.legend()
    if acc:
        ax2 = fig.add_subplot(2, 1, 2, sharex=ax)
        steps, accs = zip(*acc)
        ax2.plot(steps, accs, color="tab:green", marker="o", markersize=4, label="val accuracy")
        ax2.set_xlabel("step")
        ax2.set_ylabel("accuracy")
        ax2.grid(True, alpha=0.3)
        ax2.legend()
    with atomic_open(out_png, "wb") as f:
        # Explicit format: the temp file's suffix is ".tmp", which matplotlib cannot infer from.
        fig.savefig(f, format="png")


# --------------------------------------------------------------------------- report.md


def _fmt_bytes(v: float) -> str:
    gib = v / 2**30
    return f"{gib:.2f} GiB" if gib >= 1 else f"{v / 2**20:.1f} MiB"


def _fmt_si(v: float, unit: str) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.2f} {prefix}{unit}"
    return f"{v:.0f} {unit}"


def _fmt_seconds(v: float) -> str:
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"


def format_metric(key: str, value: Any) -> str:
    """Human formatting chosen from the metric's name (loss 4 dp, bpb 3 dp, mfu %, ...)."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    k = key.lower()
    if "mfu" in k:
        return f"{value:.2%}"
    if "bpb" in k:
        return f"{value:.3f}"
    if "loss" in k:
        return f"{value:.4f}"
    if "flops" in k:
        return _fmt_si(value, "FLOP/s" if "peak" in k or "per_second" in k else "FLOP")
    if "memory" in k or k.endswith("bytes"):
        return _fmt_bytes(value)
    if "per_second" in k or "throughput" in k:
        return f"{value:,.0f}"
    if "time" in k or "elapsed" in k or "seconds" in k or k.endswith("_s"):
        return _fmt_seconds(value)
    if "ppl" in k or "perplexity" in k:
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.0f}"


def _fence(text: str, lang: str) -> str:
    # The fence must be longer than any backtick run inside the text or the block ends early.
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text.rstrip(chr(10))}\n{ticks}\n"


def _plain(obj: Any) -> Any:
    """Convert Paths, tuples, enums... to types yaml.safe_dump accepts."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(_plain(v) for v in obj)
    if isinstance(obj, enum.Enum):
        return _plain(obj.value)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def _run_name(config: dict, run_dir: Path) -> str:
    run = config.get("run")
    if isinstance(run, dict) and run.get("name"):
        return str(run["name"])
    for key in ("run_name", "name"):
        if config.get(key):
            return str(config[key])
    return Path(run_dir).name


def write_report(
    run_dir: Path,
    *,
    config: dict,
    summary: dict,
    sample: str | None,
    extra_sections: dict[str, str] | None = None,
) -> Path:
    """Write run_dir/report.md atomically and return its path."""
    run_dir = Path(run_dir)
    parts = [f"# Run report: {_run_name(config, run_dir)}\n", "## Metrics\n",
             "| metric | value |", "|---|---|"]
    for key, value in summary.items():
        if isinstance(value, str) and "\n" in value:
            continue  # multi-line text (e.g. the sample) would break the table; it has a section
        parts.append(f"| {key} | {format_metric(key, value).replace('|', chr(92) + '|')} |")
    parts += ["", "## Loss\n", "![loss](loss.png)\n"]
    if sample is not None:
        parts += ["## Sample\n", _fence(sample, "python")]
    for heading, body in (extra_sections or {}).items():
        parts += [f"## {heading}\n", body.rstrip("\n") + "\n"]
    parts += ["## Config\n", _fence(yaml.safe_dump(_plain(config), sort_keys=False), "yaml")]
    path = run_dir / "report.md"
    write_text_atomic(path, "\n".join(parts))
    return path
