"""Where a measured figure comes from: the code's git commit, when, and what CPU measured it.

Every published figure (docs/results/*.json, written by the benchmarks and `scaletrain bench`)
carries `stamp(script)`, so that a reader can tell whether a number still describes the code, and
on which kind of CPU it was taken (native bf16 or not, int8 dot products or not).
"""

from __future__ import annotations

import datetime as _dt
import subprocess
from pathlib import Path

from scaletrain import hardware

_SOURCE = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=_SOURCE, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> str | None:
    """The commit of the checkout scaletrain runs from; None outside a git checkout (an installed wheel)."""
    return _git("rev-parse", "HEAD")


def git_dirty() -> bool | None:
    """Whether the tracked code (the package, and the benchmarks beside it in a checkout) differs
    from that commit: the figure then describes uncommitted code. Docs are left out: the
    benchmarks themselves rewrite them."""
    paths = [str(p) for p in (_SOURCE, _SOURCE.parents[1] / "benchmarks") if p.is_dir()]
    status = _git("status", "--porcelain", "--untracked-files=no", "--", *paths)
    return None if status is None else bool(status)


def cpu_flags() -> dict[str, bool]:
    """The instruction-set features that decide precision and int8 speed, by their usual names."""
    f = hardware.cpu_features()
    return {"AVX2": f["avx2"], "AVX512-BF16": f["avx512_bf16"], "AMX": f["amx"], "VNNI": f["vnni"]}


def timestamp() -> str:
    """Now, ISO 8601 with the UTC offset, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def stamp(script: str) -> dict:
    """The provenance of a figure measured now by `script` (a command line or file name)."""
    import torch

    return {"script": script, "git_commit": git_commit(), "git_dirty": git_dirty(), "timestamp": timestamp(),
            "cpu_model": hardware.machine_info()["cpu_model"], "cpu_flags": cpu_flags(),
            "torch": torch.__version__}
