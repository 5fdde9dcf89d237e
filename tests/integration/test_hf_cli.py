"""Hugging Face models through the CLI, with tiny models built from configs (tests/hf_models.py):
`model.name=hf` trains from a folder; a Llama run exports to a folder `transformers` loads with
equal logits; `model.init_from` of that folder continues from the same loss; a LoRA fine-tune
learns with its base frozen and exports merged (W + alpha/rank·B·A) or as a PEFT adapter; GPT-2
goes HF -> scaletrain -> HF unchanged; compressed runs export where GPT-2 can hold them. Nothing is
downloaded (HF_HUB_OFFLINE)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open

import hf_models
from scaletrain.models.folder import read_model_dir

pytest.importorskip("transformers")
pytest.importorskip("peft")

QUIET = ["log.tensorboard=false", "log.sample_tokens=0", "train.eval_every=0", "schedule.warmup_steps=0"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-folders")
    return {"llama": hf_models.llama_folder(root / "llama"),
            "config-only": hf_models.llama_folder(root / "config-only", weights=False),
            "gpt2": hf_models.gpt2_folder(root / "gpt2")}


def _train(run_main, run, *args) -> dict:
    code, _, err = run_main("train", *args, *QUIET, f"train.run_dir={run}")
    assert code == 0, err
    return json.loads((run / "summary.json").read_text())


def _losses(run) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


def _export(run_main, run, out, *args) -> str:
    code, text, err = run_main("export", run, "--format", "hf", "--out", out, *args)
    assert code == 0, err
    return text


def _ids(vocab: int = hf_models.VOCAB, n: int = 40) -> torch.Tensor:
    return torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(5))


def _run_logits(run, ids) -> torch.Tensor:
    _, model = read_model_dir(run)
    with torch.no_grad():
        return model.eval()(ids)


def test_a_transformers_llama_trains_from_its_folder(tmp_path, fast, run_main, folders):
    run = tmp_path / "run"
    summary = _train(run_main, run, "gpt-tiny", *fast, "model.name=hf", f"model.path={folders['llama']}",
                     "train.max_steps=25")
    losses = _losses(run)
    assert abs(losses[0] - math.log(hf_models.VOCAB)) < 0.3  # the folder's random init: near uniform
    assert summary["train_loss"] < losses[0] - 0.5 and summary["val_loss"] < summary["unigram_loss"] + 0.5
    from scaletrain.data.tokenizer import load_tokenizer

    assert load_tokenizer(run / "tokenizer.json").get_vocab_size() == hf_models.VOCAB  # the folder's tokenizer
    spec = json.loads((run / "model_config.json").read_text())
    assert spec["name"] == "hf" and spec["args"]["config"]["model_type"] == "llama"
    # The run's own architecture comes back out, loadable by transformers, with its tokenizer.
    _export(run_main, run, tmp_path / "out")
    assert (hf_models.hf_logits(tmp_path / "out", _ids()) - _run_logits(run, _ids())).abs().max() < 1e-4


def test_a_folder_without_weights_starts_from_random_ones(tmp_path, fast, run_main, folders):
    run = tmp_path / "run"
    code, _, err = run_main("train", "gpt-tiny", *fast, *QUIET, "model.name=hf", f"model.path={folders['config-only']}",
                            "train.max_steps=2", f"train.run_dir={run}")
    assert code == 0, err
    assert "holds no weights" in err and (run / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory, cache_dir):
    """A scaletrain Llama run (llama-tiny, 30 steps) and its Hugging Face export."""
    from conftest import FAST, run_main

    root = tmp_path_factory.mktemp("llama-run")
    run = root / "run"
    _train(run_main, run, "llama-tiny", *FAST, f"data.cache_dir={cache_dir}", "train.max_steps=30")
    text = _export(run_main, run, root / "hf")
    assert "LlamaForCausalLM" in text
    return run, root / "hf"


def test_a_llama_run_loads_in_transformers_with_equal_logits(llama_run):
    from transformers import AutoTokenizer

    from scaletrain.data.tokenizer import load_tokenizer

    run, out = llama_run
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_key_value_heads"] == 2
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata()["format"] == "pt"
    ids = _ids(512)
    assert (hf_models.hf_logits(out, ids) - _run_logits(run, ids)).abs().max() < 1e-4
    tok = AutoTokenizer.from_pretrained(str(out))
    text = "def main(argv):\n    return 0\n"
    assert tok(text)["input_ids"] == load_tokenizer(run / "tokenizer.json").encode(text).ids
    assert tok.eos_token == "<|endoftext|>"


def test_init_from_the_export_continues_from_the_same_loss(tmp_path, fast, run_main, llama_run):
    run, out = llama_run
    code, text, err = run_main("eval", run)
    assert code == 0, err
    before = json.loads(text)["val_loss"]
    # One step of a vanishing learning rate: the validation loss is the starting weights'.
    start = tmp_path / "start"
    summary = _train(run_main, start, "llama-tiny", *fast, f"model.init_from={out}", "train.max_steps=1",
                     "optim.lr=1e-12", "train.final_eval_batches=0")
    assert summary["val_loss"] == pytest.approx(before, abs=1e-5)
    # A fresh optimizer and schedule: a fine-tune that goes on learning from there.
    tune = tmp_path / "tune"
    summary = _train(run_main, tune, "llama-tiny", *fast, f"model.init_from={out}", "train.max_steps=10",
                     "optim.lr=1e-3")
    assert summary["steps"] == 10 and _losses(tune)[0] < math.log(512) - 0.5  # not a fresh start
    assert summary["val_loss"] < before


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, cache_dir, llama_run):
    """A LoRA fine-tune of the exported Llama, saved with a checkpoint."""
    from conftest import FAST, run_main

    _, out = llama_run
    run = tmp_path_factory.mktemp("lora") / "run"
    _train(run_main, run, "llama-tiny", *FAST, f"data.cache_dir={cache_dir}", f"model.init_from={out}",
           "model.lora.rank=4", "model.lora.alpha=8", "optim.lr=1e-2", "train.max_steps=20")
    return run


def test_a_lora_fine_tune_learns_with_its_base_frozen(run_main, llama_run, lora_run):
    from scaletrain.untrusted.pickles import read_metadata

    base_run, _ = llama_run
    code, text, err = run_main("eval", base_run)
    assert code == 0, err
    summary = json.loads((lora_run / "summary.json").read_text())
    assert summary["val_loss"] < json.loads(text)["val_loss"] - 0.01
    spec, model = read_model_dir(lora_run)
    assert spec["lora"]["rank"] == 4 and len(spec["lora"]["target_modules"]) == 7
    _, base = read_model_dir(base_run)
    tuned = model.state_dict()
    for name, value in base.state_dict().items():  # every base weight bit for bit
        key = name if name in tuned else name.replace(".weight", ".base_layer.weight")
        assert torch.equal(tuned[key], value), name
    # The optimizer's state, in the checkpoint too, is the adapters' alone.
    checkpoint = sorted((lora_run / "checkpoints").iterdir())[-1]
    state = [k for k in read_metadata(checkpoint / ".metadata").state_dict_metadata if k.startswith("optim.state.")]
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state)


def test_a_lora_run_exports_merged_weights(tmp_path, run_main, lora_run):
    from safetensors.torch import load_file

    _export(run_main, lora_run, tmp_path / "merged")
    _, model = read_model_dir(lora_run)
    layer = model.layers[1].attention.wq
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = layer.get_base_layer().weight + 8 / 4 * (b @ a)
    rows = torch.arange(64).view(4, 8, 2).transpose(1, 2).reshape(-1)  # HF's rotary layout: 4 heads of 16
    exported = load_file(tmp_path / "merged" / "model.safetensors")["model.layers.1.self_attn.q_proj.weight"]
    assert torch.allclose(exported, expected.detach()[rows], atol=1e-6, rtol=0)
    assert (hf_models.hf_logits(tmp_path / "merged", _ids(512)) - _run_logits(lora_run, _ids(512))).abs().max() < 1e-4


def test_a_lora_run_exports_a_peft_adapter(tmp_path, run_main, llama_run, lora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, base_folder = llama_run
    text = _export(run_main, lora_run, tmp_path / "adapter", "--lora", "adapter")
    assert "14 adapted layers" in text
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == str(base_folder.resolve())
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_folder)), str(tmp_path / "adapter"))
    with torch.no_grad():
        logits = model.eval()(input_ids=_ids(512)).logits
    assert (logits - _run_logits(lora_run, _ids(512))).abs().max() < 1e-4


def test_gpt2_goes_through_scaletrain_unchanged(tmp_path, fast, run_main, folders):
    run = tmp_path / "run"
    _train(run_main, run, "gpt-tiny", *fast, f"model.init_from={folders['gpt2']}", "train.max_steps=1",
           "optim.lr=1e-12", "optim.weight_decay=0")
    spec = json.loads((run / "model_config.json").read_text())
    assert spec["args"]["bias"] and spec["args"]["seq_len"] == 64 and spec["args"]["d_model"] == 32
    assert "model:\n  lora: null\n  init_from" in (run / "config.yaml").read_text()
    _export(run_main, run, tmp_path / "out")
    ids = _ids(n=64)
    assert (hf_models.hf_logits(tmp_path / "out", ids) - hf_models.hf_logits(folders["gpt2"], ids)).abs().max() < 1e-4


@pytest.mark.slow
def test_compressed_gpt_runs_export_where_gpt2_holds_them(tmp_path, fast, run_main):
    run = tmp_path / "run"
    _train(run_main, run, "gpt-tiny", *fast, "train.max_steps=10")
    common = ["--no-onnx", "--eval-batches", "1", "--latency-rounds", "1"]
    for method, extra in (("prune-structured", ["--head-amount", "0"]), ("lowrank", ["--energy", "0.8"])):
        code, _, err = run_main("compress", run, "--method", method, *extra, *common, "--out", tmp_path / method)
        assert code == 0, err
        _export(run_main, tmp_path / method, tmp_path / f"{method}-hf")
        ids = _ids(512, 64)
        assert (hf_models.hf_logits(tmp_path / f"{method}-hf", ids) - _run_logits(tmp_path / method, ids)).abs().max() < 1e-4
    # Pruned heads: GPT-2 derives the head width from its hidden size; refused, nothing written.
    code, _, err = run_main("compress", run, "--method", "prune-structured", *common, "--out", tmp_path / "heads")
    assert code == 0, err
    code, _, err = run_main("export", tmp_path / "heads", "--format", "hf", "--out", tmp_path / "heads-hf")
    assert code == 2 and err.startswith("error: model.layer_heads") and not (tmp_path / "heads-hf").exists()
    assert not list(tmp_path.glob(".heads-hf*"))


@pytest.mark.slow
def test_onnx_export_matches_under_onnx_runtime(tmp_path, run_main, llama_run):
    from scaletrain.compress.export import OrtModel

    run, _ = llama_run
    code, text, err = run_main("export", run, "--format", "onnx", "--out", tmp_path / "onnx")
    assert code == 0, err
    ids = _ids(512, 64)
    assert (OrtModel(tmp_path / "onnx" / "model.onnx")(ids) - _run_logits(run, ids)).abs().max() < 1e-4
    assert (tmp_path / "onnx" / "tokenizer.json").is_file()


def test_export_refuses_a_folder_that_holds_files(tmp_path, run_main, llama_run):
    run, _ = llama_run
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_main("export", run, "--format", "hf", "--out", out)
    assert code == 2 and err.startswith("error: --out:") and "not empty" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("change, named", [
    ("pickled", "pytorch_model.bin"),
    ("remote-code", "not an architecture transformers"),
])
def test_an_untrusted_folder_is_refused(tmp_path, fast, run_main, folders, change, named):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(folders["llama"], folder)
    if change == "pickled":
        (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    else:  # code shipped in the folder under a name transformers does not define
        config = json.loads((folder / "config.json").read_text())
        config.update(model_type="my_llama", auto_map={"AutoModelForCausalLM": "modeling_mine.MyLlama"})
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "modeling_mine.py").write_text("raise SystemExit('this code must never run')\n")
    code, _, err = run_main("train", "gpt-tiny", *fast, *QUIET, "model.name=hf", f"model.path={folder}",
                            "train.max_steps=1", f"train.run_dir={tmp_path / 'run'}")
    assert code == 2 and named in err and not (tmp_path / "run").exists(), err


@pytest.mark.parametrize("overrides, named", [
    (["model.trust_remote_code=true"], "model.trust_remote_code"),
    (["parallel.strategy=tp", "parallel.nproc=2", "parallel.oversubscribe=true"], "model.name=hf"),
    (["parallel.strategy=pp", "parallel.nproc=2", "parallel.oversubscribe=true"], "model.name=hf"),
    (["data.document_mask=true"], "data.document_mask"),
])
def test_what_an_hf_model_cannot_do_is_refused_before_any_work(tmp_path, run_main, folders, overrides, named):
    code, _, err = run_main("train", "model.name=hf", f"model.path={folders['llama']}", *overrides,
                            f"train.run_dir={tmp_path / 'run'}")
    assert code == 2 and named in err and not (tmp_path / "run").exists(), err
