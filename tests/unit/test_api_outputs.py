"""The Python API with the models and datasets people bring: a model that returns a `transformers`
ModelOutput or a dict, datasets whose rows are dicts, a task of one's own (the `Task` protocol),
and a `transformers` model split by its `_no_split_modules`. Each against the plain-tensor run it
must equal."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from scaletrain import CausalLanguageModeling, Classification, Task, Trainer, UserError, load_config

QUIET = ["optim.name=sgd", "optim.lr=0.5", "schedule.name=constant", "schedule.warmup_steps=0",
         "train.max_steps=8", "train.batch_size=8", "train.threads=1", "train.eval_every=0", "log.every=1",
         "log.progress=false", "log.tensorboard=false", "log.sample_tokens=0"]


def _losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r.get("split") == "train"]


class TinyLM(nn.Module):
    """Embedding + MLP + head, returning its logits as `kind` says."""

    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.emb, self.mlp, self.head = nn.Embedding(32, 24), nn.Linear(24, 24), nn.Linear(24, 32)

    def forward(self, idx):
        logits = self.head(torch.tanh(self.mlp(self.emb(idx))))
        if self.kind == "output":
            from transformers.modeling_outputs import CausalLMOutput

            return CausalLMOutput(logits=logits)
        return {"logits": logits} if self.kind == "dict" else logits


def _token_rows(n: int, as_dict: bool):
    starts = torch.randint(0, 32, (n,), generator=torch.Generator().manual_seed(1)).tolist()
    rows = [((s + torch.arange(9)) % 32).tolist() for s in starts]
    return [{"input_ids": r, "other": 0} for r in rows] if as_dict else [torch.tensor(r) for r in rows]


@pytest.mark.parametrize("kind", ["output", "dict"])
def test_a_model_returning_a_model_output_trains_as_a_tensor_model(tmp_path, kind):
    if kind == "output":
        pytest.importorskip("transformers")
    runs = {}
    for name, model, as_dict in (("tensor", TinyLM("tensor"), False), (kind, TinyLM(kind), True)):
        rows = _token_rows(48, as_dict)
        task = CausalLanguageModeling(rows[:40], rows[40:], seed=0)
        cfg = load_config("gpt-tiny", [*QUIET, f"train.run_dir={tmp_path / name}"])
        summary = Trainer.from_config(cfg, model, task).fit()
        runs[name] = _losses(tmp_path / name)
        assert summary["val_loss"] < summary["train_loss"] + 1.0  # evaluation reads the output too
    assert runs[kind] == runs["tensor"]  # dict rows, ModelOutput: the same numbers
    assert runs[kind][-1] < runs[kind][0] - 0.5  # and it learns


class DictClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x=None, pixels=None):
        out = self.net(pixels if pixels is not None else x)
        return {"logits": out} if pixels is not None else out


def test_dict_rows_classify_as_tensor_pairs(tmp_path):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    tensors = TensorDataset(x, y)
    rows = [{"pixels": x[i].tolist(), "label": int(y[i])} for i in range(96)]
    runs = {}
    for name, train, val in (("pairs", TensorDataset(x[:80], y[:80]), TensorDataset(x[80:], y[80:])),
                             ("dicts", rows[:80], rows[80:])):
        task = Classification(train, val, seed=0, fingerprint="same-data")
        cfg = load_config("mlp-digits", [*QUIET, f"train.run_dir={tmp_path / name}"])
        Trainer.from_config(cfg, DictClassifier(), task).fit()
        runs[name] = _losses(tmp_path / name)
    assert len(tensors) == 96
    assert runs["dicts"] == pytest.approx(runs["pairs"], abs=1e-6)
    with pytest.raises(KeyError, match="label_key"):
        Classification(rows, rows, seed=0, label_key="y").train_batch(0, 4)


class WithAux(nn.Module):
    """Returns logits and an auxiliary loss term, as mixture-of-experts models do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        logits = self.lin(x)
        return {"logits": logits, "aux": logits.pow(2).mean()}


class AuxTask(Classification):
    """A task of one's own: cross-entropy plus the model's auxiliary term."""

    def loss(self, output, y):
        return F.cross_entropy(output["logits"], y) + 0.1 * output["aux"]


def test_a_custom_task_reads_the_whole_output(tmp_path):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 4, generator=g)
    y = (x.sum(1) > 0).long()
    task = AuxTask(TensorDataset(x[:48], y[:48]), TensorDataset(x[48:], y[48:]), seed=0)
    assert isinstance(task, Task)
    cfg = load_config("mlp-digits", [*QUIET, f"train.run_dir={tmp_path / 'aux'}"])
    Trainer.from_config(cfg, WithAux(), task).fit()
    model = WithAux()  # the first step's loss, computed by hand from the same batch
    bx, by = task.train_batch(0, 8)
    with torch.no_grad():
        out = model(bx)
        first = float(F.cross_entropy(out["logits"], by) + 0.1 * out["aux"])
    assert _losses(tmp_path / "aux")[0] == pytest.approx(first, abs=1e-6)


def test_a_layout_needs_torchrun_in_the_api(tmp_path):
    cfg = load_config("mlp-digits", [*QUIET, "parallel.strategy=ddp", f"train.run_dir={tmp_path / 'r'}"])
    with pytest.raises(UserError, match="torchrun --nproc-per-node"):
        Trainer.from_config(cfg, DictClassifier(), None)
    assert not (tmp_path / "r").exists()


def test_a_transformers_model_is_split_by_its_decoder_layers():
    transformers = pytest.importorskip("transformers")
    from scaletrain.models import family_of_module

    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                      num_attention_heads=2)
    model = transformers.AutoModelForCausalLM.from_config(config)
    family = family_of_module(model)
    assert family is not None and family.plan.blocks(model) is model.model.layers
    assert family_of_module(DictClassifier()) is None
