"""The installed size of scaletrain's core and of each extra, measured in fresh virtual environments.

1. a venv (no system site-packages) with `pip install -c constraints.txt .`: the core's size on disk
   (every file under site-packages, pip and setuptools excluded) and its largest distributions;
2. `pip install -c constraints.txt '.[all]'` into it: what each extra adds on top of the core,
   from the installed distributions' file lists (a distribution two extras share counts for both).

Writes docs/results/install_size.json and prints the README's table. A few minutes (pip resolves and
installs ~1-3 GB from the local wheel cache): `python benchmarks/install_size.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("compress", "bnb", "parquet", "hf", "ray", "trackers", "test", "bench")

# Run by the venv's own Python: every installed distribution's size, and the closure of the core
# (no extras) and of each extra's requirements, from the installed metadata.
_MEASURE = r"""
import json, re, sys
from importlib import metadata

def norm(n): return re.sub(r"[-_.]+", "-", n).lower()

def req_name(r): return norm(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", r).group(1))

def req_extras(r):
    m = re.match(r"\s*[A-Za-z0-9][A-Za-z0-9._-]*\s*\[([^\]]*)\]", r)
    return [e.strip() for e in m.group(1).split(",")] if m else []

def marker_extra(r):
    m = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", r.partition(";")[2])
    return m.group(1) if m else None

dists = {norm(d.metadata["Name"]): d for d in metadata.distributions()}
size = {}
for name, d in dists.items():
    total = 0
    for f in d.files or []:
        try:
            total += f.locate().stat().st_size
        except OSError:
            pass
    size[name] = total

def closure(name, extras=()):
    seen, todo = set(), [(name, tuple(extras))]
    while todo:
        n, ex = todo.pop()
        key = (n, ex)
        if key in seen or n not in dists:
            continue
        seen.add(key)
        for r in dists[n].requires or []:
            e = marker_extra(r)
            if e is None or e in ex:
                todo.append((req_name(r), tuple(req_extras(r))))
    return {n for n, _ in seen}

core = closure("scaletrain")
extras = {e: sorted(closure("scaletrain", [e]) - core) for e in sys.argv[1:]}
print(json.dumps({"size": size, "core": sorted(core), "extras": extras}))
"""


def _site_bytes(venv: Path) -> int:
    site = next(venv.glob("lib/python*/site-packages"))
    total = 0
    for dirpath, _, files in os.walk(site):
        rel = Path(dirpath).relative_to(site).parts
        if rel and rel[0].split("-")[0] in ("pip", "setuptools", "_distutils_hack"):
            continue
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def _pip(py: Path, *args: str) -> None:
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "-c", str(ROOT / "constraints.txt"), *args],
                   check=True, cwd=ROOT)


def _measure(py: Path) -> dict:
    out = subprocess.run([str(py), "-c", _MEASURE, *EXTRAS], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="scaletrain-install-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        py = venv / "bin" / "python"
        _pip(py, str(ROOT))
        core_bytes = _site_bytes(venv)
        core = _measure(py)
        _pip(py, f"{ROOT}[all]")
        all_bytes = _site_bytes(venv)
        full = _measure(py)
    size = full["size"]
    core_dists = sorted(core["core"], key=lambda n: -size.get(n, 0))
    result = {
        "python": sys.version.split()[0],
        "torch_pin": (ROOT / "constraints.txt").read_text().split("torch==")[-1].split()[0],
        "core_bytes": core_bytes,
        "core_distributions": {n: size.get(n, 0) for n in core_dists if n != "scaletrain"},
        "all_bytes": all_bytes,
        "extras": {e: {"bytes": sum(size.get(n, 0) for n in names), "distributions": names}
                   for e, names in full["extras"].items()},
    }
    out = ROOT / "docs" / "results" / "install_size.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    mb = lambda b: f"{b / 1e6:,.0f} MB"  # noqa: E731
    print(f"core: {mb(core_bytes)} (torch {mb(size.get('torch', 0))}); everything: {mb(all_bytes)}")
    print("largest core distributions: " + ", ".join(f"{n} {mb(b)}" for n, b in
                                                     list(result["core_distributions"].items())[:8]))
    print("| extra | adds | packages |\n|---|---|---|")
    for e, r in result["extras"].items():
        print(f"| `{e}` | {mb(r['bytes'])} | {len(r['distributions'])} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
