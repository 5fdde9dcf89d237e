"""plan against a measured run: the benchmark's worker trains a small GPT in a fresh process and
measures its peak (VmHWM minus the pre-model baseline); the prediction must be within 15 %."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # one measured configuration in a fresh process: ~20-60 s on a busy 2-core box
def test_plan_agrees_with_a_measured_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plan_accuracy.py"), "--only",
                           "d256-L4-b8-T256", "--out", str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r"predicted\s+([\d.]+) MiB\s+measured\s+([\d.]+) MiB", proc.stdout)
    assert m, proc.stdout
    predicted, measured = float(m.group(1)), float(m.group(2))
    assert measured > 100  # the model really trained (its activations alone are > 100 MiB)
    assert abs(predicted / measured - 1) <= 0.15
