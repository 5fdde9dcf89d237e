"""plan's memory and time model: each term against the tensors it stands for, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from scaletrain.config.load import load_config
from scaletrain.diagnose import plan
from scaletrain.diagnose.devices import KNOWN_DEVICES
from scaletrain.models import build_model, get_family
from scaletrain.parallel.dims import ParallelDims

GPT = ["model.n_layer=4", "model.n_head=4", "model.d_model=256", "data.vocab_size=4096", "data.seq_len=256",
       "train.batch_size=8", "train.precision=fp32"]


def shape(*overrides):
    return plan.model_spec(load_config("gpt-tiny", [*GPT, *overrides]))


SINGLE, DDP2, ZERO1_2, FSDP4 = ParallelDims(), ParallelDims(dp_replicate=2), ParallelDims(dp_replicate=2, zero1=True), \
    ParallelDims(dp_shard=4)


def test_shape_matches_the_built_model():
    cfg = load_config("gpt-tiny", GPT)
    s = plan.model_spec(cfg)
    args = get_family("gpt").args_from_config(cfg.model, plan.data_shape(cfg))  # as the trainer builds it
    model = build_model("gpt", args)
    assert s.params == sum(p.numel() for p in model.parameters())
    assert s.block_params == sum(p.numel() for p in model.blocks[0].parameters())
    assert s.flops_per_unit == model.flops_per_token()
    assert s.tp_params == 4 * 12 * 256 * 256  # qkv 3d² + proj d² + fc 4d² + proj 4d², 4 blocks


def test_static_terms_are_bytes_per_parameter():
    s = shape()
    P = s.params
    single = plan.memory(s, "adamw", SINGLE, 8, 1, "fp32", False, False, "cpu")
    assert single["parameters"] == 4 * P and single["gradients"] == 4 * P and single["optimizer_state"] == 8 * P
    assert plan.memory(s, "sgd", SINGLE, 8, 1, "fp32", False, False, "cpu")["optimizer_state"] == 0
    ddp = plan.memory(s, "adamw", DDP2, 8, 1, "fp32", False, False, "cpu")
    assert ddp["peak"] - single["peak"] == pytest.approx(4 * P)  # DDP's gradient buckets
    zero1 = plan.memory(s, "adamw", ZERO1_2, 8, 1, "fp32", False, False, "cpu")
    assert zero1["optimizer_state"] == 4 * P and zero1["parameters"] == 4 * P
    fsdp = plan.memory(s, "adamw", FSDP4, 8, 1, "fp32", False, False, "cpu")
    assert fsdp["parameters"] == P and fsdp["optimizer_state"] == 2 * P
    z2 = plan.memory(s, "adamw", FSDP4, 8, 1, "fp32", False, False, "cpu",
                     reshard_after_forward=False)
    assert z2["peak"] - fsdp["peak"] == pytest.approx(4 * (s.n_layer - 2) * s.block_params)
    gpu = plan.memory(s, "adamw", FSDP4, 8, 1, "fp32", False, True, "cuda")
    assert gpu["parameters"] == gpu["optimizer_state"] == 0  # offloaded to the host


def test_activations_follow_the_tensor_count():
    s = shape()
    m, d, V = 8 * 256, 256, 4096
    saved, transient = s.activation_bytes(8, "fp32", ac=False)
    # 17d per block (rotary, off in gpt-tiny, adds 2d + the measured ROPE_EXTRA_D),
    # embeddings 2d, final norm d, log-softmax V
    assert not s.rope
    assert saved == 4 * m * (4 * 17 * d + 2 * d + d + V)
    assert transient == 4 * m * (2 * V + 2 * 4 * d + 3 * d)
    ac_saved, _ = s.activation_bytes(8, "fp32", ac=True)
    assert ac_saved == 4 * m * (2 * d + 4 * d + d + V)
    # twice the micro-batch, twice the activations
    assert s.activation_bytes(16, "fp32", ac=False)[0] == 2 * saved


def test_bf16_on_the_cpu_keeps_the_written_out_attention_probabilities():
    # models/attention.py writes bf16 CPU attention out: B x H x T² bf16 probabilities a layer
    s = shape("train.precision=bf16")
    probs = 8 * 256 * 4 * (2 * 256 - 4)  # + B·H·T² bf16 probabilities, - SDPA's fp32 log-sum-exp
    cpu = plan.memory(s, "adamw", SINGLE, 8, 1, "bf16", False, False, "cpu")
    gpu = plan.memory(s, "adamw", SINGLE, 8, 1, "bf16", False, False, "cuda")
    assert cpu["activations"] - gpu["activations"] == 4 * probs
    cpu_ac = plan.memory(s, "adamw", SINGLE, 8, 1, "bf16", True, False, "cpu")
    gpu_ac = plan.memory(s, "adamw", SINGLE, 8, 1, "bf16", True, False, "cuda")
    assert cpu_ac["activations"] == gpu_ac["activations"]
    assert cpu_ac["temporary"] - gpu_ac["temporary"] == probs  # one block recomputed at a time
    fp32 = plan.memory(s, "adamw", SINGLE, 8, 1, "fp32", False, False, "cpu")
    assert fp32 == plan.memory(s, "adamw", SINGLE, 8, 1, "fp32", False, False, "cuda")
    long = shape("train.precision=bf16", "data.seq_len=1024")  # SDPA's kernel again
    assert (plan.memory(long, "adamw", SINGLE, 8, 1, "bf16", False, False, "cpu")["activations"]
            == plan.memory(long, "adamw", SINGLE, 8, 1, "bf16", False, False, "cuda")["activations"])


def test_accumulation_keeps_gradients_during_backward():
    s = shape()
    one = plan.memory(s, "adamw", SINGLE, 8, 1, "fp32", False, False, "cpu")
    two = plan.memory(s, "adamw", SINGLE, 8, 2, "fp32", False, False, "cpu")
    assert two["peak"] - one["peak"] == pytest.approx(4 * s.params)


def test_step_time_is_flops_over_peak_plus_communication():
    s = shape()
    h100 = KNOWN_DEVICES["h100"]
    comp, comm_s, comm_b = plan.step_time(s, h100, ParallelDims(dp_replicate=8), 8, 1, "bf16", False, False)
    tokens = 8 * 8 * 256
    assert comp == pytest.approx(s.flops_per_unit * tokens / 8 / (989e12 * 0.4))
    assert comm_b == pytest.approx(2 * 7 / 8 * 4 * s.params)
    assert comm_s == pytest.approx(comm_b / 450e9)
    ac, _, _ = plan.step_time(s, h100, ParallelDims(dp_replicate=8), 8, 1, "bf16", True, False)
    assert comp < ac < comp * 4 / 3 + 1e-12


def test_recommendation_fits_and_is_the_fastest_fitting(tmp_path):
    cfg = load_config("gpt-tiny", GPT)
    p = plan.plan(cfg, world_size=4, device="a100", device_memory_bytes=int(1.6e9))
    fitting = [c for c in p.candidates if c.fits]
    assert p.best in fitting and len(fitting) < len(p.candidates)  # the limit excludes some
    assert p.best.step_seconds == min(c.step_seconds for c in fitting)
    assert all(c.micro_batch * c.grad_accum * c.dp_size == p.global_batch for c in p.candidates)
    assert {"ddp", "zero1", "fsdp", "fsdp-zero2", "tp", "fsdp+tp"} == {c.strategy for c in p.candidates}
    assert {c.dp_size for c in p.candidates if c.strategy == "fsdp+tp"} == {2}  # tp=2 x dp=2 on 4 ranks


def test_cli_plan_write_and_errors(tmp_path, run_main):
    out = tmp_path / "planned.yaml"
    code, text, err = run_main("plan", "gpt-tiny", *GPT, "--world-size", "2", "--device", "h100", "--write", out)
    assert code == 0, err
    assert "recommended:" in text
    written = load_config(str(out))
    assert written.parallel.nproc == 2 and written.parallel.strategy in ("ddp", "zero1", "fsdp", "tp")
    dp = 1 if written.parallel.strategy == "tp" else 2
    assert written.train.batch_size * written.train.grad_accum * dp == 16  # the global batch is kept
    code, text, _ = run_main("plan", "gpt-tiny", *GPT, "--device", "h200", "--json")
    data = json.loads(text)
    assert code == 0 and data["best"]["fits"] and data["device"] == "h200"
    code, _, err = run_main("plan", "gpt-tiny", "--device", "tpu9")
    assert code == 2 and "unknown device 'tpu9'" in err
    code, _, err = run_main("plan", "gpt-tiny", "--write", out)
    assert code == 2 and "already exists" in err
    code, text, _ = run_main("plan", "gpt-tiny", *GPT, "--device", "h100", "--device-memory", "0.5")
    assert code == 0 and "no layout fits" in text


def test_fsdp_tp_shards_the_block_matmuls_over_tp_and_everything_over_dp():
    s = shape()
    P, T = s.params, s.tp_params
    hybrid = plan.memory(s, "adamw", ParallelDims(dp_shard=2, tp=2), 8, 1, "fp32", False, False, "cpu")
    assert hybrid["parameters"] == pytest.approx(4 * (P - T + T / 2) / 2)
    assert hybrid["optimizer_state"] == pytest.approx(8 * (P - T + T / 2) / 2)
    # activations: the TP-split tensors as under tp alone
    assert hybrid["activations"] == s.activation_bytes(8, "fp32", False, 2)[0]
    h100 = KNOWN_DEVICES["h100"]
    _, _, tp_bytes = plan.step_time(s, h100, ParallelDims(tp=2), 8, 1, "bf16", False, False)
    _, _, both = plan.step_time(s, h100, ParallelDims(dp_shard=2, tp=2), 8, 1, "bf16", False, False)
    # the tp all-reduces of tp alone, plus FSDP's traffic of the TP-local parameters over 2 dp ranks
    assert both == pytest.approx(tp_bytes + 0.5 * (P - T + T / 2) * (2 * 2 + 4))


def test_a_multi_billion_parameter_model_on_eight_gpus_gets_sharded_candidates():
    # an 8B-class decoder (32 layers, d 4096, d_ff 14336, vocab 128k): AdamW's 16 bytes/parameter
    # cannot fit one 80 GB GPU, so ddp/zero1 never fit and a sharded layout is recommended
    big = ["model.n_layer=32", "model.n_head=32", "model.d_model=4096", "model.d_ff=14336",
           "data.vocab_size=128256", "data.seq_len=2048", "train.batch_size=1", "train.precision=bf16",
           "model.rope=true"]
    p = plan.plan(load_config("gpt", big), world_size=8, device="h100")
    assert 6e9 < p.spec.params < 9e9  # a GELU MLP (2 matrices, not SwiGLU's 3) and a tied head: 6.4B
    strategies = {c.strategy for c in p.candidates}
    assert {"fsdp", "tp", "fsdp+tp"} <= strategies
    assert not any(c.fits for c in p.candidates if c.strategy in ("ddp", "zero1"))
    assert p.best is not None and p.best.strategy in ("fsdp", "fsdp-zero2", "tp", "fsdp+tp")


def test_a_model_without_blocks_gets_data_parallel_layouts_only():
    cfg = load_config("mlp-digits", ["train.precision=fp32"])
    p = plan.plan(cfg, world_size=4, device="a100")
    assert {c.strategy for c in p.candidates} == {"ddp", "zero1", "fsdp", "fsdp-zero2"}
    assert not any(c.activation_checkpointing for c in p.candidates)
