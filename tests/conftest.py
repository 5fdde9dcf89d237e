"""Shared fixtures: one prepared-data cache per session, CLI runners, one torch thread per test."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Every training run in the tests: one thread (a busy 2-core box makes tiny models 100x slower with
# more), no progress bars, fp32 (CPUs without native bf16 run the bf16 preset ~10x slower).
FAST = ["train.threads=1", "log.progress=false", "train.precision=fp32"]

_SUBPROCESS_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1",
                   "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny models gain nothing from intra-op threads, and on a shared, busy CPU the OpenMP
    # barrier waits make each op up to ~100x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    """A `data.cache_dir` shared by the whole session: gpt-tiny is prepared once, then reused."""
    return str(tmp_path_factory.mktemp("data-cache"))


@pytest.fixture
def fast(cache_dir) -> list[str]:
    """Overrides for a quick, quiet, single-threaded run that reuses the session's data cache."""
    return [*FAST, f"data.cache_dir={cache_dir}"]


def run_cli(*args: str, cwd: str | Path, timeout: float = 120) -> tuple[int, str, str]:
    """`python -m scaletrain ARGS` in a subprocess: (exit code, stdout, stderr)."""
    env = {**os.environ, **_SUBPROCESS_ENV}
    proc = subprocess.run([sys.executable, "-m", "scaletrain", *map(str, args)], cwd=str(cwd),
                          capture_output=True, text=True, timeout=timeout, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def run_main(*args: str) -> tuple[int, str, str]:
    """`scaletrain.cli.main.main([...])` in this process: (exit code, stdout, stderr)."""
    from scaletrain.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as exc:  # --help / --version exit through argparse
            rc = exc.code if isinstance(exc.code, int) else 0
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(name="run_cli")
def _run_cli_fixture():
    return run_cli


@pytest.fixture(name="run_main")
def _run_main_fixture():
    return run_main


@pytest.fixture
def said():
    """The messages of the `scaletrain` logger at INFO and above, as the CLI shows them."""
    import logging

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("scaletrain")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)
