"""The name mappings between the native families and `transformers` (models/<family>/hf.py), against
`transformers`' own forward pass: a tiny model built from a config, saved with `save_pretrained`,
read with `model.init_from` (scaletrain's logits equal HF's), written back (every tensor equal to
the file's), and every way a folder may not fit refused by name. Nothing is downloaded.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import hf_models
from scaletrain.config.load import load_config
from scaletrain.errors import UserError
from scaletrain.models import build_model, get_family
from scaletrain.models.family import DataShape
from scaletrain.models.hfmap import to_hf_state
from scaletrain.train.pretrained import folder_weights, load_folder_weights

pytest.importorskip("transformers")

SEQ = 24


def native_from(folder, family: str, preset: str, seq: int = SEQ):
    """The native model `model.init_from=folder` builds (architecture from config.json, weights mapped)."""
    cfg = load_config(preset, [f"model.init_from={folder}"])
    fam = get_family(family)
    args = fam.args_from_config(cfg.model, DataShape(vocab_size=hf_models.VOCAB, seq_len=seq))
    weights = folder_weights(cfg, fam)
    model = build_model(family, args)
    load_folder_weights(model, weights, cfg, fam)
    return model.eval()


def ids(n: int = SEQ) -> torch.Tensor:
    return torch.randint(0, hf_models.VOCAB, (2, n), generator=torch.Generator().manual_seed(3))


def round_trip(model, folder, family: str) -> None:
    """Export (to_hf_state through the same entries) gives back the file's tensors exactly."""
    fam = get_family(family)
    config = json.loads((folder / "config.json").read_text())
    entries = fam.hf.tensors(model.args_dict(), config)
    state = to_hf_state(entries, model.state_dict())
    saved = load_file(folder / "model.safetensors")
    # transformers 5 saves some heads under their original names (GPT-NeoX's embed_out)
    stored = {e.hf: next(n for n in (e.hf, *e.alt) if n in saved) for e in entries}
    for name, tensor in state.items():
        assert torch.equal(tensor, saved[stored[name]]), name
    assert set(saved) - set(stored.values()) <= {"lm_head.weight"}  # a tied head is the embedding


@pytest.mark.parametrize("overrides", [
    {},  # grouped-query attention, untied head
    {"tie_word_embeddings": True, "num_key_value_heads": 4},
    # Llama 3.1's long-context rotary scaling
    {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16}, "rope_theta": 500000.0},
], ids=["gqa", "tied", "llama3-scaling"])
def test_llama_logits_equal_transformers(tmp_path, overrides):
    folder = hf_models.llama_folder(tmp_path / "llama", tokenizer=False, **overrides)
    model = native_from(folder, "llama", "llama-tiny")
    with torch.no_grad():
        ours = model(ids())
    theirs = hf_models.hf_logits(folder, ids())
    assert (ours - theirs).abs().max() < 1e-5
    round_trip(model, folder, "llama")


def test_gpt2_logits_equal_transformers(tmp_path):
    folder = hf_models.gpt2_folder(tmp_path / "gpt2", tokenizer=False)
    model = native_from(folder, "gpt", "gpt-tiny")
    assert model.args.bias and not model.args.rope and model.args.seq_len == 64  # GPT-2's position table
    with torch.no_grad():
        ours = model(ids())
    assert (ours - hf_models.hf_logits(folder, ids())).abs().max() < 1e-5
    round_trip(model, folder, "gpt")


def test_gpt_neox_logits_equal_transformers(tmp_path):
    folder = hf_models.neox_folder(tmp_path / "neox", tokenizer=False)
    model = native_from(folder, "gpt", "gpt-tiny")
    assert model.args.rope and model.args.bias
    with torch.no_grad():
        ours = model(ids())
    assert (ours - hf_models.hf_logits(folder, ids())).abs().max() < 1e-5
    round_trip(model, folder, "gpt")


def test_the_permutations_are_needed(tmp_path):
    """Loading a Llama without the rotary permutation (or a GPT-2 without the qkv one) changes the
    logits: the tests above would see a mapping that forgot them."""
    from scaletrain.models.hfmap import TensorMap

    folder = hf_models.llama_folder(tmp_path / "llama", tokenizer=False)
    model = native_from(folder, "llama", "llama-tiny")
    saved = load_file(folder / "model.safetensors")
    wrong = [TensorMap(e.ours, e.hf) for e in get_family("llama").hf.tensors(model.args_dict(), {})]
    with torch.no_grad():
        for e in wrong:
            model.state_dict()[e.ours].copy_(saved[e.hf])
        assert (model(ids()) - hf_models.hf_logits(folder, ids())).abs().max() > 1e-3


def _error(folder, family="llama", preset="llama-tiny") -> str:
    with pytest.raises(UserError) as info:
        native_from(folder, family, preset)
    return str(info.value)


@pytest.mark.parametrize("key, value, named", [
    ("attention_bias", True, "attention_bias"),
    ("hidden_act", "gelu", "hidden_act"),
    ("head_dim", 16, "head_dim"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 2.0}, "yarn"),
])
def test_a_llama_config_that_does_not_fit_is_refused_by_key(tmp_path, key, value, named):
    folder = hf_models.llama_folder(tmp_path / "llama", tokenizer=False)
    config = json.loads((folder / "config.json").read_text())
    config.pop("rope_parameters", None) if key == "rope_scaling" else None
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    message = _error(folder)
    assert named in message and "config.json" in message


def test_neox_parallel_residual_is_refused(tmp_path):
    folder = hf_models.neox_folder(tmp_path / "neox", tokenizer=False, use_parallel_residual=True)
    assert "use_parallel_residual" in _error(folder, "gpt", "gpt-tiny")


def test_another_architecture_is_refused_with_the_family_that_reads_it(tmp_path):
    folder = hf_models.llama_folder(tmp_path / "llama", tokenizer=False)
    message = _error(folder, "gpt", "gpt-tiny")
    assert "LlamaForCausalLM" in message and "model.name=llama" in message


def test_a_tensor_of_another_shape_is_named(tmp_path):
    folder = hf_models.llama_folder(tmp_path / "llama", tokenizer=False)
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 96  # the file's MLP is 64 wide
    (folder / "config.json").write_text(json.dumps(config))
    message = _error(folder)
    assert "mlp.gate_proj.weight" in message and "[64, 32]" in message


def test_a_missing_tensor_is_named(tmp_path):
    from safetensors.torch import save_file

    folder = hf_models.llama_folder(tmp_path / "llama", tokenizer=False)
    saved = load_file(folder / "model.safetensors")
    del saved["model.layers.1.mlp.up_proj.weight"]
    save_file(saved, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert "model.layers.1.mlp.up_proj.weight" in _error(folder)


def test_pickled_weights_are_refused(tmp_path):
    folder = hf_models.llama_folder(tmp_path / "llama", tokenizer=False)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    message = _error(folder)
    assert "pytorch_model.bin" in message and "pickled" in message


@pytest.mark.parametrize("change, named", [
    ({"norm": "rmsnorm"}, "model.norm"),
    ({"layer_heads": [1, 2]}, "model.layer_heads"),
    ({"layer_heads": [1, 1]}, "pruned heads"),
    ({"layer_d_ff": [64, 128]}, "model.layer_d_ff"),
    ({"qk_norm": True}, "model.qk_norm"),
    ({"qk_norm": True, "rope": True}, "model.qk_norm"),
])
def test_gpt_export_refuses_what_gpt2_cannot_hold(change, named):
    args = {"vocab_size": 64, "seq_len": 16, "n_layer": 2, "n_head": 2, "d_model": 32, "d_ff": 128, "dropout": 0.0,
            "bias": False, "norm": "layernorm", "tie_embeddings": True, "rope": False, **change}
    with pytest.raises(UserError, match=named.replace(".", r"\.")):
        get_family("gpt").hf.config_to_hf(args, None)


def test_llama_export_refuses_qk_norm():
    with pytest.raises(UserError, match="qk_norm"):
        get_family("llama").hf.config_to_hf({"qk_norm": True}, None)


@pytest.mark.parametrize("name, args", [
    ("gpt", {"rope": False, "bias": False, "tie_embeddings": True}),
    ("gpt", {"rope": False, "bias": True, "tie_embeddings": False, "d_ff": 48}),
    ("gpt", {"rope": True, "bias": False, "tie_embeddings": True}),
    ("gpt", {"rope": True, "bias": True, "tie_embeddings": False}),
    ("gpt", {"rope": False, "bias": False, "tie_embeddings": True, "activation": "relu2"}),
    ("gpt", {"rope": True, "bias": False, "tie_embeddings": True, "activation": "relu2"}),
    ("llama", {"n_kv_head": 2, "tie_embeddings": False}),
    ("llama", {"n_kv_head": 4, "tie_embeddings": True,
               "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 8}}),
], ids=["gpt2", "gpt2-bias-untied", "neox", "neox-bias-untied", "gpt2-relu2", "neox-relu2", "llama-gqa", "llama-tied-scaled"])
def test_native_models_export_with_transformers_logits(name, args):
    """Every export the CLI writes goes through transformers_model: random native weights (biases
    too) in, the HF model out, logits equal."""
    from scaletrain.export.hf import logits_difference, transformers_model

    base = {"vocab_size": 80, "seq_len": 20, "n_layer": 2, "n_head": 4, "d_model": 32}
    if name == "llama":
        base.update(multiple_of=16, rope_theta=10000.0)
    torch.manual_seed(0)
    model = build_model(name, {**base, **args}).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bias") or "norm" in pname:
                p.normal_(0, 0.1)  # not their zero/one init: a dropped bias or gain would show
    hf = transformers_model(model, {"name": name, "args": model.args_dict()}, {"eos_token_id": 0})
    expected = "LlamaForCausalLM" if name == "llama" else "GPTNeoXForCausalLM" if args["rope"] else "GPT2LMHeadModel"
    assert type(hf).__name__ == expected
    assert logits_difference(model, hf, 80, 20) < 1e-6
    if name == "gpt":  # and back: the activation survives the round trip
        config = hf.config.to_dict()
        again = get_family("gpt").hf.args_from_hf(config, DataShape(seq_len=None))
        assert again.get("activation") == args.get("activation", "gelu")


def test_a_gpt2_file_saved_from_the_base_model_with_old_buffers_loads(tmp_path):
    """The original GPT-2 checkpoints: names without `transformer.`, causal-mask buffers beside the
    weights, no lm_head (tied)."""
    from safetensors.torch import save_file

    folder = hf_models.gpt2_folder(tmp_path / "gpt2", tokenizer=False)
    reference = hf_models.hf_logits(folder, ids())
    saved = load_file(folder / "model.safetensors")
    old = {k.removeprefix("transformer."): v for k, v in saved.items() if k != "lm_head.weight"}
    for i in range(2):
        old[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
        old[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(old, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model = native_from(folder, "gpt", "gpt-tiny")
    with torch.no_grad():
        assert (model(ids()) - reference).abs().max() < 1e-5
