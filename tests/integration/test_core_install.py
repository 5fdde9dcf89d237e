"""scaletrain with only its core dependencies: it imports, answers --help and trains the MLP preset,
and a command that needs an extra names it in one `error:` line.

Cheaper than a second virtual environment: a subprocess whose first `sys.meta_path` finder refuses
every installed top-level module that neither the standard library nor the core's dependency
closure provides (computed from pyproject.toml and the installed packages' metadata), as if those
packages were not installed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)).lower()


def core_closure() -> set[str]:
    """Distribution names (normalized) the core dependencies pull in, extras' requirements left out."""
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    todo, seen = [_name(r) for r in core], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r.partition(";")[2].replace('extra=="', 'extra == "')]
    return seen


def blocked_modules() -> list[str]:
    allowed = core_closure()
    blocked = set()
    for module, dists in metadata.packages_distributions().items():
        if module in sys.stdlib_module_names or module.startswith("_") or module == "scaletrain":
            continue
        if not any(_name(d) in allowed for d in dists):
            blocked.add(module)
    return sorted(blocked)


# Run in the subprocess: the path finder (which finds installed packages) is replaced by one that
# does not see the blocked modules, exactly as if they were not installed (find_spec answers None,
# import raises ModuleNotFoundError); then `python -m scaletrain ARGS`, or the given code.
_BLOCKER = """
import importlib.machinery, runpy, sys
BLOCKED = set({blocked!r})

class OnlyTheCore:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)

    @classmethod
    def invalidate_caches(cls):
        importlib.machinery.PathFinder.invalidate_caches()

sys.meta_path[:] = [OnlyTheCore if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""


def run_core_only(*args: str, code: str | None = None, cwd: Path, timeout: float = 180):
    script = _BLOCKER.format(blocked=blocked_modules())
    if code is None:
        script += f"sys.argv = ['scaletrain', *{list(map(str, args))!r}]\nrunpy.run_module('scaletrain', run_name='__main__')\n"
    else:
        script += code
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def test_the_blocker_blocks_the_extras_and_keeps_the_core(tmp_path):
    blocked = blocked_modules()
    installed = {m for m in ("torchao", "onnxruntime", "bitsandbytes", "pyarrow", "mlflow", "sklearn")
                 if m in metadata.packages_distributions()}
    assert installed <= set(blocked)
    assert not {"torch", "numpy", "yaml", "pydantic", "rich", "tensorboard", "matplotlib", "safetensors",
                "tokenizers", "xxhash"} & set(blocked)
    code, out, err = run_core_only(code="import importlib.util\nprint(importlib.util.find_spec('mlflow'))\n"
                                   "import mlflow\n", cwd=tmp_path)
    assert code == 1 and out == "None\n" and "ModuleNotFoundError: No module named 'mlflow'" in err


def test_imports_and_help_with_only_the_core(tmp_path):
    code, out, err = run_core_only(code="import scaletrain, scaletrain.cli.main, scaletrain.train.trainer\n"
                                   "import scaletrain.compress.run, scaletrain.data.sources\nprint('ok')\n",
                                   cwd=tmp_path)
    assert (code, out.strip()) == (0, "ok"), err[-2000:]
    code, out, err = run_core_only("train", "--help", cwd=tmp_path)
    assert code == 0 and "section.key=value" in out, err[-2000:]


def test_mlp_digits_trains_with_only_the_core(tmp_path, cache_dir):
    run = tmp_path / "run"
    code, out, err = run_core_only("train", "mlp-digits", "train.max_steps=2", "train.threads=1",
                                   f"train.run_dir={run}", cwd=tmp_path)
    assert code == 0, err[-3000:]
    assert (run / "model.safetensors").is_file() and (run / "loss.png").is_file()
    assert any((run / "tensorboard").iterdir())  # the default tracker is in the core


@pytest.mark.parametrize("args,extra", [
    (("train", "mlp-digits", "optim.name=adamw8bit"), "bnb"),
    (("train", "mlp-digits", "log.trackers=[tensorboard,mlflow]"), "trackers"),
    (("train", "mlp-digits", "log.trackers=[wandb]"), "trackers"),
    (("train", "mlp-digits", "log.trackers=[trackio]"), "trackers"),
])
def test_a_missing_extra_is_one_line_before_any_work(tmp_path, args, extra):
    code, out, err = run_core_only(*args, f"train.run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err[-2000:]
    assert f"pip install 'scaletrain[{extra}]'" in err
    assert not (tmp_path / "run").exists()


def test_parquet_and_compress_name_their_extras(tmp_path):
    import pyarrow as pa  # the test environment has every extra: write the file here
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a document"] * 4}), tmp_path / "docs.parquet")
    code, _, err = run_core_only("prepare", str(tmp_path / "docs.parquet"), "--out", str(tmp_path / "out"),
                                 cwd=tmp_path)
    assert code == 2 and "pip install 'scaletrain[parquet]'" in err and err.count("\n") == 1, err[-2000:]
    assert not (tmp_path / "out").exists()
    run = tmp_path / "run"
    code, _, err = run_core_only("train", "mlp-digits", "train.max_steps=2", "train.threads=1",
                                 "log.trackers=[]", f"train.run_dir={run}", cwd=tmp_path)
    assert code == 0, err[-2000:]
    before = sorted(p.name for p in tmp_path.iterdir())
    for method in ("int8-dynamic", "onnx-int8"):
        code, _, err = run_core_only("compress", str(run), "--method", method, cwd=tmp_path)
        assert code == 2 and "pip install 'scaletrain[compress]'" in err and err.count("\n") == 1, err[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no RUN-METHOD folder
    code, _, err = run_core_only("compress", str(run), "--method", "prune", "--no-onnx", "--latency-rounds", "1",
                                 cwd=tmp_path)
    assert code == 0, err[-2000:]  # a method that needs no extra runs
