"""How the command line ends when the world gets in the way: a reader that closed the pipe, a
file-system error, and the modes of what it creates (the user's umask, like any Unix tool)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST, _SUBPROCESS_ENV, run_main


def _cli(*args, cwd: Path, umask: int | None = None, **popen) -> subprocess.Popen:
    env = {**os.environ, **_SUBPROCESS_ENV}
    return subprocess.Popen([sys.executable, "-m", "scaletrain", *map(str, args)], cwd=cwd, env=env,
                            preexec_fn=(lambda: os.umask(umask)) if umask is not None else None, **popen)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A small prepared shard folder whose `data inspect` prints far more than a pipe holds."""
    work = tmp_path_factory.mktemp("pipe")
    corpus = work / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"{i:02d}.txt").write_text(f"document {i} says " + "something else entirely " * 400)
    proc = _cli("prepare", corpus, "--out", work / "shards", "--workers", "1", "--no-progress",
                "--vocab-size", "300", cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return work / "shards"


def test_a_closed_pipe_ends_quietly(prepared, tmp_path):
    """`scaletrain data inspect DIR | head -c 100`: the reader leaves, the command ends without a
    traceback (141, as a shell reports SIGPIPE)."""
    proc = _cli("data", "inspect", prepared, "--samples", "30", "--tokens", "100000", cwd=tmp_path,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(100)
    proc.stdout.close()  # like `head` exiting
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 141), err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert err == ""


def test_a_file_system_error_is_one_error_line(monkeypatch, tmp_path):
    """ENOSPC, EACCES, EROFS in the middle of a command: one line naming the file, exit 1."""
    from scaletrain.data import pipeline

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "out" / "work" / "x"))

    monkeypatch.setattr(pipeline, "run_prepare", full)
    rc, out, err = run_main("prepare", "--out", tmp_path / "out", "--no-progress")
    assert rc == 1 and out == ""
    assert err.strip() == f"error: No space left on device: {tmp_path / 'out' / 'work' / 'x'}"


def test_an_oserror_that_is_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    from scaletrain.data import pipeline

    def bug(*args, **kwargs):
        raise OSError("not from the file system")

    monkeypatch.setattr(pipeline, "run_prepare", bug)
    with pytest.raises(OSError, match="not from the file system"):
        run_main("prepare", "--out", tmp_path / "out", "--no-progress")


def _modes(root: Path) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {"file": set(), "dir": set()}
    for p in [root, *root.rglob("*")]:
        out["dir" if p.is_dir() else "file"].add(stat.S_IMODE(p.stat().st_mode))
    return out


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_follow_the_umask(tmp_path, umask):
    """Read once at import from /proc/self/status (no racy os.umask pair), applied to mkstemp's and
    mkdtemp's 0600/0700 and to files a library writes by name (safetensors makes them 0600)."""
    code = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from safetensors.torch import save_file\n"
        "from scaletrain import atomic\n"
        "root = Path(sys.argv[1])\n"
        "atomic.write_text_atomic(root / 'a' / 'text.txt', 'x')\n"
        "atomic.write_json_atomic(root / 'a' / 'obj.json', {})\n"
        "with atomic.atomic_path(root / 'a' / 'w.safetensors') as tmp:\n"
        "    save_file({'w': torch.zeros(2)}, str(tmp))\n"
        "atomic.make_temp_dir(root, '.build-')\n"
        "with atomic.new_folder(root / 'b' / 'c') as f:\n"
        "    (f / 'x').write_text('x')\n"
    )
    env = {**os.environ, **_SUBPROCESS_ENV}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], check=True, env=env,
                   preexec_fn=lambda: os.umask(umask), timeout=120)
    assert _modes(tmp_path / "out") == {"file": {0o666 & ~umask}, "dir": {0o777 & ~umask}}


@pytest.mark.slow
def test_a_run_and_its_data_cache_follow_the_umask(tmp_path):
    """The whole path under umask 027: the prepared-data cache (built in a temp folder), the run
    folder, its checkpoints and model.safetensors are group-readable, not 0600/0700."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"{i}.txt").write_text(f"file {i}: " + "words and more words to read " * 300)
    proc = _cli("train", "gpt-tiny", *FAST, "log.sample_tokens=0", "schedule.warmup_steps=0", "train.max_steps=2",
                "train.eval_every=0", "train.final_eval_batches=1", f"data.path={corpus}",
                f"data.cache_dir={tmp_path / 'cache'}", f"train.run_dir={tmp_path / 'run'}",
                cwd=tmp_path, umask=0o027, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert (tmp_path / "run" / "model.safetensors").is_file()
    for folder in ("cache", "run"):
        assert _modes(tmp_path / folder) == {"file": {0o640}, "dir": {0o750}}, folder
