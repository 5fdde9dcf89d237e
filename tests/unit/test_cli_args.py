"""Every numeric or text flag of every subcommand is checked while the command line is parsed: a bad
value is exit 2, exactly one stderr line `error: --FLAG: ...`, no traceback and nothing on
stdout, before any file is read (the run folders below do not even exist)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_main

RUN = "/nonexistent/run"


def refused(*argv: str) -> str:
    code, out, err = run_main(*argv)
    assert code == 2, (argv, code, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
    assert out == "", (argv, out)
    return lines[0]


CASES = [
    (("eval", RUN, "--batches", "-1"), "--batches"),
    (("eval", RUN, "--batches", "1.5"), "--batches"),
    (("eval", RUN, "--batches", "9" * 5000), "--batches"),
    (("generate", RUN, "--tokens", "0"), "--tokens"),
    (("generate", RUN, "--tokens", str(2**20 + 1)), "--tokens"),
    (("generate", RUN, "--temperature", "nan"), "--temperature"),
    (("generate", RUN, "--temperature", "inf"), "--temperature"),
    (("generate", RUN, "--temperature", "-0.5"), "--temperature"),
    (("generate", RUN, "--temperature", "1e-30"), "--temperature"),
    (("generate", RUN, "--top-k", "-1"), "--top-k"),
    (("generate", RUN, "--seed", "-1"), "--seed"),
    (("generate", RUN, "--seed", str(2**64)), "--seed"),
    (("compress", RUN, "--method", "prune", "--amount", "2"), "--amount"),
    (("compress", RUN, "--method", "prune", "--amount", "nan"), "--amount"),
    (("compress", RUN, "--method", "prune", "--amount", "1"), "--amount"),
    (("compress", RUN, "--method", "prune-structured", "--head-amount", "-0.1"), "--head-amount"),
    (("compress", RUN, "--method", "lowrank", "--energy", "0"), "--energy"),
    (("compress", RUN, "--method", "lowrank", "--energy", "inf"), "--energy"),
    (("compress", RUN, "--method", "prune", "--threads", "0"), "--threads"),
    (("compress", RUN, "--method", "prune", "--latency-rounds", "0"), "--latency-rounds"),
    (("compress", RUN, "--method", "prune", "--finetune-steps", "-1"), "--finetune-steps"),
    (("compress", RUN, "--method", "prune", "--finetune-lr", "nan"), "--finetune-lr"),
    (("compress", RUN, "--method", "prune", "--finetune-lr", "0"), "--finetune-lr"),
    (("compress", RUN, "--method", "distill", "--distill-steps", "0"), "--distill-steps"),
    (("compress", RUN, "--method", "distill", "--temperature", "inf"), "--temperature"),
    (("compress", RUN, "--method", "distill", "--temperature", "0"), "--temperature"),
    (("compress", RUN, "--method", "distill", "--alpha", "1.5"), "--alpha"),
    (("compress", RUN, "--method", "prune", "--eval-batches", "-3"), "--eval-batches"),
    (("verify", "gpt-tiny", "--steps", "0"), "--steps"),
    (("profile", "gpt-tiny", "--steps", "0"), "--steps"),
    (("profile", "gpt-tiny", "--warmup", "-1"), "--warmup"),
    (("profile", "gpt-tiny", "--top", "0"), "--top"),
    (("plan", "gpt-tiny", "--world-size", "0"), "--world-size"),
    (("plan", "gpt-tiny", "--device-memory", "nan"), "--device-memory"),
    (("plan", "gpt-tiny", "--device-memory", "0"), "--device-memory"),
    (("doctor", RUN, "--device-memory", "-1"), "--device-memory"),
    (("doctor", RUN, "--device-memory", "inf"), "--device-memory"),
    (("prepare", "--out", "/nonexistent/out", "--workers", "0"), "--workers"),
    (("prepare", "--out", "/nonexistent/out", "--vocab-size", "10"), "--vocab-size"),
    (("prepare", "--out", "/nonexistent/out", "--vocab-size", str(2**31)), "--vocab-size"),
    (("prepare", "--out", "/nonexistent/out", "--threshold", "inf"), "--threshold"),
    (("prepare", "--out", "/nonexistent/out", "--val-fraction", "1"), "--val-fraction"),
    (("prepare", "--out", "/nonexistent/out", "--max-non-alnum-fraction", "nan"), "--max-non-alnum-fraction"),
    (("prepare", "--out", "/nonexistent/out", "--bands", "0"), "--bands"),
    (("prepare", "--out", "/nonexistent/out", "--max-bytes", "0"), "--max-bytes"),
    (("prepare", "--out", "/nonexistent/out", "--min-chars", "-1"), "--min-chars"),
    (("prepare", "--out", "/nonexistent/out", "--task-bytes", "0"), "--task-bytes"),
    (("data", "inspect", RUN, "--tokens", "0"), "--tokens"),
    (("data", "inspect", RUN, "--samples", "-1"), "--samples"),
    (("bench", "optim", "--steps", "0"), "--steps"),
]


@pytest.mark.parametrize("argv,flag", CASES, ids=[" ".join(a[:1] + a[-2:])[:60] for a, _ in CASES])
def test_bad_flag_values_name_the_flag(argv, flag):
    assert refused(*argv).startswith(f"error: {flag}: ")


def test_messages_say_the_range():
    assert refused("eval", RUN, "--batches", "-1") == "error: --batches: must be between 0 and 1,000,000,000, got -1"
    assert refused("generate", RUN, "--temperature", "nan").endswith("--temperature: must be a finite number, got 'nan'")
    assert refused("compress", RUN, "--method", "prune", "--amount", "2").endswith("--amount: must be in [0, 1), got 2")
    assert "0 (greedy)" in refused("generate", RUN, "--temperature", "1e-9")


def test_prompt_that_is_not_utf8():
    # Linux hands undecodable argv bytes to Python as lone surrogates (os.fsdecode).
    assert refused("generate", RUN, "--prompt", "def \udcff") == "error: --prompt: not valid UTF-8"


def test_student_values_are_read_within_the_yaml_limits():
    bomb = "[&a [1, 1, 1, 1, 1, 1, 1, 1], " + ", ".join(f"&b{i} [" + ", ".join([f"*{'a' if i == 0 else f'b{i - 1}'}"] * 8) + "]"
                                                          for i in range(12)) + "]"
    assert "aliases expand" in refused("compress", RUN, "--method", "distill", "--student", f"hidden={bomb}")
    assert "duplicate key" in refused("compress", RUN, "--method", "distill", "--student", "x={a: 1, a: 2}")


def test_nproc_beyond_this_machine_is_refused_at_launch(tmp_path):
    from scaletrain.config.schema import _usable_cores

    n = max(_usable_cores(), torch.cuda.device_count() if torch.cuda.is_available() else 0) + 1
    line = refused("train", "gpt-tiny", "parallel.strategy=ddp", f"parallel.nproc={n}", f"train.run_dir={tmp_path / 'r'}")
    assert line.startswith(f"error: parallel.nproc: {n} processes") and "parallel.oversubscribe=true" in line
    assert not (tmp_path / "r").exists()
    line = refused("verify", "gpt-tiny", "parallel.strategy=ddp", f"parallel.nproc={n}")
    assert line.startswith("error: parallel.nproc: ")


def test_generate_refuses_a_model_whose_weights_are_not_finite(tmp_path):
    from safetensors.torch import save_model

    from scaletrain.config.load import load_config, to_yaml
    from scaletrain.models.gpt.model import GPT, GPTArgs

    cfg = load_config("gpt-tiny")
    model = GPT(GPTArgs(vocab_size=cfg.data.vocab_size, seq_len=cfg.data.seq_len, n_layer=1, n_head=2, d_model=16))
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    (tmp_path / "model_config.json").write_text(json.dumps({"name": "gpt", "args": model.args_dict()}))
    save_model(model, str(tmp_path / "model.safetensors"))
    assert refused("generate", str(tmp_path), "--tokens", "3").endswith("weights are not finite (NaN or Inf: the run "
                                                                       "diverged); nothing to sample")
