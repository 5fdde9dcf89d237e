"""One report per compressed folder: report.md, compression.png and summary.json.

Rows are the original and each compressed model: parameters, size on disk, validation quality,
latency p50 at batch 1 and 64, and the ratios to the original (size ratio = compressed bytes /
original bytes; speedup = original latency / compressed latency).
"""
from __future__ import annotations

import platform
from pathlib import Path

from scaletrain.atomic import atomic_open, write_json_atomic, write_text_atomic


def quality_key(metrics: dict) -> str:
    """The headline quality: perplexity for a language model, accuracy for a classifier."""
    return "val_accuracy" if "val_accuracy" in metrics else "val_ppl"


def add_ratios(rows: list[dict]) -> list[dict]:
    base = rows[0]
    for row in rows:
        row["size_ratio"] = row["size_bytes"] / base["size_bytes"]
        for b in ("b1", "b64"):
            row[f"speedup_{b}"] = base["latency_ms"][b] / row["latency_ms"][b]
    return rows


def versions() -> dict:
    """The versions that made the report; the [compress] extra's packages where installed (a
    method that needs none of them runs without them)."""
    from importlib import metadata

    import torch

    found = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchao", "onnx", "onnxruntime"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _fmt_quality(m: dict) -> str:
    if "val_accuracy" in m:
        return f"{100 * m['val_accuracy']:.2f} %"
    return f"{m['val_loss']:.4f} / {m['val_ppl']:.2f}"


def write_report(out: Path, summary: dict) -> None:
    rows = summary["rows"]
    label = "accuracy" if "val_accuracy" in rows[0]["quality"] else "val loss / perplexity"
    lines = [f"# Compression: {summary['method']}", "",
             f"Source: `{summary['source']}` (weights from `{summary['weights']}`). "
             f"Options: `{summary['options']}`.", "",
             f"| model | parameters | size on disk | {label} | p50 b1 (ms) | p50 b64 (ms) | speedup b1 | "
             "speedup b64 | size ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['size_bytes'] / 1e6:.3f} MB | "
                     f"{_fmt_quality(r['quality'])} | {r['latency_ms']['b1']:.2f} | {r['latency_ms']['b64']:.1f} | "
                     f"{r['speedup_b1']:.2f}x | {r['speedup_b64']:.2f}x | {r['size_ratio']:.3f} |")
    lat = summary["latency"]
    lines += ["", f"Latency: CPU, {lat['threads']} thread(s), median of {lat['rounds']} interleaved rounds, "
              f"input {lat['input']}. Quality: {summary['eval']}.", ""]
    for text in summary.get("warnings", []):
        lines.append(f"**{text}**")
        lines.append("")
    for key, text in summary.get("notes", {}).items():
        lines.append(f"- {key}: {text}")
    lines += ["", "Files: " + ", ".join(f"`{f}`" for f in summary["files"]), "",
              "![compression](compression.png)", ""]
    write_text_atomic(out / "report.md", "\n".join(lines))
    plot(rows, out / "compression.png", summary["method"])
    write_json_atomic(out / "summary.json", summary)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["model"] for r in rows]
    qk = quality_key(rows[0]["quality"])
    panels = [("size ratio", [r["size_ratio"] for r in rows]),
              ("speedup b1", [r["speedup_b1"] for r in rows]),
              ("speedup b64", [r["speedup_b64"] for r in rows]),
              (qk, [r["quality"][qk] for r in rows])]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    for ax, (name, values) in zip(axes, panels):
        ax.bar(range(len(values)), values, color=["#888"] + ["#3a7"] * (len(values) - 1))
        ax.set_xticks(range(len(values)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(name)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=90)
    plt.close(fig)
