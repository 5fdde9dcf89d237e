"""What a run shows where its output goes to a file or a pipe (nohup, SLURM, CI), with -q and -v,
and which other libraries' messages are kept off the console."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from conftest import run_cli

RUN = ["mlp-digits", "train.threads=1", "train.max_steps=30", "log.every=10", "train.eval_every=20",
       "log.trackers=[]"]


def test_a_piped_run_shows_step_lines_on_stderr_and_the_result_on_stdout(tmp_path):
    # log.progress is left at its default (true): with no terminal there is no bar to draw.
    code, out, err = run_cli("train", *RUN, f"train.run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert code == 0, err[-2000:]
    precision, *lines = err.splitlines()
    assert precision == "precision: fp32 (train.precision=fp32 as set)"  # the preset's choice, said once
    assert [line.split(" | ")[0] for line in lines] == ["step 10/30", "step 20/30", "step 20", "step 30/30", "step 30"]
    assert lines[2].startswith("step 20 | val loss ") and "accuracy" in lines[2]
    assert "\x1b[" not in err and "━" not in err  # no bar, no terminal codes
    assert out.splitlines()[0].startswith("done: ") and out.splitlines()[-1] == f"run folder: {tmp_path / 'run'}"


def test_quiet_shows_only_the_result_and_verbose_keeps_the_steps(tmp_path):
    code, out, err = run_cli("-q", "train", *RUN, f"train.run_dir={tmp_path / 'q'}", cwd=tmp_path)
    assert code == 0 and err == "" and out.startswith("done: "), err[-2000:]
    code, out, err = run_cli("train", "-v", *RUN, f"train.run_dir={tmp_path / 'v'}", cwd=tmp_path)
    assert code == 0 and "step 30/30 | loss" in err, err[-2000:]
    code, _, err = run_cli("-v", "train", "-q", *RUN, cwd=tmp_path)
    assert code == 2 and err == "error: -v/--verbose and -q/--quiet: choose one\n"


def test_an_adapted_preset_value_is_one_info_line(tmp_path):
    """The line saying a preset value gave way to an override: shown by default, hidden by -q."""
    code, _, err = run_cli("-q", "train", "gpt-tiny", "train.threads=1", "train.max_steps=5", "log.trackers=[]",
                           "log.sample_tokens=0", "train.precision=fp32", "train.eval_every=0",
                           "train.final_eval_batches=1", f"train.run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert code == 0 and err == "", err[-2000:]
    code, _, err = run_cli("train", "gpt-tiny", "train.threads=1", "train.max_steps=5", "log.trackers=[]",
                           "log.sample_tokens=0", "train.precision=fp32", "train.eval_every=0", "log.progress=false",
                           "train.final_eval_batches=1", f"train.run_dir={tmp_path / 'again'}", cwd=tmp_path)
    assert err.splitlines()[0] == ("schedule.warmup_steps: 5 from the preset gpt-tiny shortened to 0 to fit "
                                   "train.max_steps=5")


@pytest.mark.parametrize("logger,message", [
    ("torchao", "Failed to load /x/site-packages/torchao/_C_cutlass_90a.abi3.so: Could not load this library"),
    ("torch.utils._pytree", "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by "
                            "torch.compile as an opaque value type. Calling register_constant() on Enum "
                            "subclasses is deprecated and will be an error in a future release."),
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community: ... "
                                      "Please make sure you already `pip install kernels`"),
])
def test_known_noise_is_dropped_unless_verbose(logger, message):
    import scaletrain  # noqa: F401  (installs the filters)

    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    target, ours = logging.getLogger(logger), logging.getLogger("scaletrain")
    handler, level = Keep(), ours.level
    target.addHandler(handler)
    try:
        ours.setLevel(logging.INFO)
        target.warning(message)
        target.warning("Failed to load a model: something else")  # another message of the same library
        ours.setLevel(logging.DEBUG)  # -v
        target.warning(message)
    finally:
        target.removeHandler(handler)
        ours.setLevel(level)
    assert seen == ["Failed to load a model: something else", message]


@pytest.mark.slow  # imports torchao and bitsandbytes (~10 s)
def test_the_real_libraries_import_quietly():
    """The messages as torchao, torch and bitsandbytes print them today, through logging's default
    handler and Python's default warning display: nothing reaches stderr after `import scaletrain`."""
    pytest.importorskip("torchao")
    pytest.importorskip("bitsandbytes")
    code = ("import logging, warnings; logging.basicConfig(level=logging.INFO); warnings.simplefilter('default')\n"
            "import scaletrain; from scaletrain.cli import logs; logs.configure()\n"
            "import torchao, bitsandbytes, torchao.quantization\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "_C_cutlass" not in proc.stderr and "register_constant" not in proc.stderr
    assert "pip install kernels" not in proc.stderr and "torch.jit" not in proc.stderr, proc.stderr[-2000:]


def test_a_python_user_configures_logging_as_usual(tmp_path, fast):
    """Without the CLI, the lines are records of the `scaletrain` logger for the user's handlers."""
    from scaletrain.config.load import load_config
    from scaletrain.train.build import build_trainer

    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append((record.name, record.levelname, record.getMessage()))

    ours = logging.getLogger("scaletrain")
    handler, level = Keep(), ours.level
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    try:
        cfg = load_config("mlp-digits", [*fast, "log.trackers=[]", "train.max_steps=20", "log.every=10",
                                         "train.eval_every=0", f"train.run_dir={tmp_path / 'run'}"])
        build_trainer(cfg).fit()
    finally:
        ours.removeHandler(handler)
        ours.setLevel(level)
    assert seen[0] == ("scaletrain.train", "INFO", "precision: fp32 (train.precision=fp32 as set)")
    seen = seen[1:]
    assert ("scaletrain.train", "INFO") == seen[0][:2] and seen[0][2].startswith("step 10/20 | loss ")
    assert [m.split(" | ")[0] for _, _, m in seen] == ["step 10/20", "step 20/20", "step 20"]
