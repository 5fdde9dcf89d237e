"""Every trainable preset's full default run, judged by `scaletrain doctor`; mlp-digits for each of
train.seed=0..4. The tests run short versions of gpt and llama (tests/integration/test_presets.py);
this is the full-run check (~15 minutes on 2 cores: gpt and llama train ~5 minutes each).

Each run is `scaletrain train PRESET` as a user types it (log.trackers=[] only, to keep TensorBoard
files out of the way), timed as a whole command. The llama3.x presets are published shapes for
`scaletrain plan` on GPUs and are not trained. Writes docs/results/presets.json and prints a table:
`python benchmarks/presets.py [PRESET...]`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = [("mlp-digits", seed) for seed in range(5)] + [("mlp-digits", None), ("gpt-tiny", None),
                                                      ("llama-tiny", None), ("gpt", None), ("llama", None)]


def run(preset: str, seed: int | None, work: Path) -> dict:
    run_dir = work / f"{preset}-{'default' if seed is None else seed}"
    argv = [sys.executable, "-m", "scaletrain", "-q", "train", preset, "log.trackers=[]", f"train.run_dir={run_dir}"]
    if seed is not None:
        argv.append(f"train.seed={seed}")
    began = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=work)
    seconds = time.perf_counter() - began
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv[3:])} failed:\n{proc.stderr[-3000:]}")
    doctor = subprocess.run([sys.executable, "-m", "scaletrain", "doctor", str(run_dir), "--json"],
                            capture_output=True, text=True, check=True, cwd=work)
    summary = json.loads((run_dir / "summary.json").read_text())
    findings = json.loads(doctor.stdout)
    return {"preset": preset, "seed": seed, "command_seconds": seconds, "steps": summary["steps"],
            "val_loss": summary["val_loss"], "val_accuracy": summary.get("val_accuracy"),
            "val_bpb": summary.get("val_bpb"), "stopped_by": summary["stopped_by"],
            "findings": [(f["kind"], f["severity"]) for f in findings],
            "warnings": [f"{f['kind']}: {f['summary']}" for f in findings if f["severity"] != "info"]}


def main() -> None:
    wanted = set(sys.argv[1:])
    rows = []
    with tempfile.TemporaryDirectory(prefix="scaletrain-presets-") as tmp:
        for preset, seed in RUNS:
            if not wanted or preset in wanted:
                rows.append(run(preset, seed, Path(tmp)))
                r = rows[-1]
                quality = f"acc {r['val_accuracy']:.4f}" if r["val_accuracy"] is not None else f"bpb {r['val_bpb']:.3f}"
                print(f"{preset:>10} seed {str(seed if seed is not None else 'preset'):>6}: {quality}  val_loss "
                      f"{r['val_loss']:.4f}  {r['command_seconds']:.1f} s  warnings: {r['warnings'] or 'none'}",
                      flush=True)
    out = ROOT / "docs" / "results" / "presets.json"
    if not wanted:
        from docs_out import write_section

        out.write_text(json.dumps({"python": sys.version.split()[0], "runs": rows}, indent=1) + "\n")
        write_section(ROOT / "docs" / "diagnostics.md", "<!-- presets:start -->", "<!-- presets:end -->", table(rows))
        print(f"wrote {out} and docs/diagnostics.md")


def table(rows: list[dict]) -> str:
    lines = ["<!-- presets:start -->",
             f"Measured by `python benchmarks/presets.py` on {time.strftime('%Y-%m-%d')} (2 shared CPU cores; the "
             "command times include other work on the machine):", "",
             "| preset | train.seed | steps | validation | whole command | doctor: warnings (info) |",
             "|---|---|---:|---|---:|---|"]
    for r in rows:
        quality = (f"{100 * r['val_accuracy']:.2f} % accuracy" if r["val_accuracy"] is not None
                   else f"{r['val_bpb']:.3f} bits per byte")
        info = ", ".join(kind for kind, severity in r["findings"] if severity == "info")
        seed = "the preset's" if r["seed"] is None else str(r["seed"])
        judged = "; ".join(r["warnings"]) or "none"
        if info:
            judged += f" ({info})"
        lines.append(f"| `{r['preset']}` | {seed} | {r['steps']} | {quality} | {r['command_seconds']:.0f} s | {judged} |")
    return "\n".join(lines + ["<!-- presets:end -->"])


if __name__ == "__main__":
    main()
