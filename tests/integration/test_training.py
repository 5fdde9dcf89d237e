"""End-to-end training in this process: build from a config, fit, and check the numbers."""

from __future__ import annotations

import gzip
import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from scaletrain.config.load import load_config
from scaletrain.errors import UserError
from scaletrain.train.build import build_task, build_trainer

QUIET = ["log.sample_tokens=0", "log.tensorboard=false"]


def fit(preset: str, fast: list[str], run_dir: Path, *overrides: str):
    cfg = load_config(preset, [*fast, *QUIET, f"train.run_dir={run_dir}", *overrides])
    trainer = build_trainer(cfg)
    return trainer, trainer.fit()


def train_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "train"]


# ---- (1) the loss falls ----------------------------------------------------------------------


def test_tiny_gpt_learns(tmp_path, fast):
    _, summary = fit("gpt-tiny", fast, tmp_path / "run", "train.max_steps=120", "train.eval_every=0")
    vocab = 512
    assert summary["steps"] == 120 and summary["stopped_by"] == "max_steps"
    first = train_records(tmp_path / "run")[0]["loss"]
    assert abs(first - math.log(vocab)) < 0.5  # starts near uniform over the vocabulary
    assert summary["val_loss"] < math.log(vocab) - 1.2
    assert summary["val_loss"] < summary["unigram_loss"] - 0.3  # learned more than token frequencies
    assert summary["train_loss"] < first - 1.0
    assert 0 < summary["val_bpb"] < summary["val_loss"] / math.log(2)  # > 1 byte per token
    assert summary["val_ppl"] == pytest.approx(math.exp(summary["val_loss"]))


# ---- (2) bit-exact resume --------------------------------------------------------------------

N = 10
RESUME = ["model.dropout=0.1", "schedule.name=constant", f"train.checkpoint_every={N}", "train.eval_every=5",
          "train.final_eval_batches=4", "checkpoint.keep_last=3"]


def _dcp_state(checkpoint: Path, tmp: Path) -> dict:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp / f"{checkpoint.parent.parent.name}-{checkpoint.name}.pt"
    dcp_to_torch_save(str(checkpoint), str(out))
    return torch.load(out, weights_only=False)


def _assert_same(a, b, where="state"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def _assert_same_weights(run_a: Path, run_b: Path):
    a, b = load_file(run_a / "model.safetensors"), load_file(run_b / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_is_bit_exact(tmp_path, fast):
    a_dir, b_dir, c_dir = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _, a = fit("gpt-tiny", fast, a_dir, *RESUME, f"train.max_steps={2 * N}")

    # B: N steps, then a new trainer continues the same folder to 2N.
    fit("gpt-tiny", fast, b_dir, *RESUME, f"train.max_steps={N}")
    halfway = load_file(b_dir / "model.safetensors")
    trainer, b = fit("gpt-tiny", fast, b_dir, *RESUME, f"train.max_steps={2 * N}", "train.resume=auto")
    assert trainer.state.step == 2 * N and b["steps"] == 2 * N

    # C: a fresh folder resuming from an explicit checkpoint of A.
    _, c = fit("gpt-tiny", fast, c_dir, *RESUME, f"train.max_steps={2 * N}",
               f"train.resume={a_dir / 'checkpoints' / f'step_{N:08d}'}")

    final = load_file(b_dir / "model.safetensors")
    assert any(not torch.equal(halfway[k], final[k]) for k in final), "the resumed run did not train"
    state_a = _dcp_state(a_dir / "checkpoints" / f"step_{2 * N:08d}", tmp_path)
    for other_dir, other in ((b_dir, b), (c_dir, c)):
        _assert_same_weights(a_dir, other_dir)
        assert other["train_loss"] == a["train_loss"]
        assert other["val_loss"] == a["val_loss"]
        _assert_same(state_a, _dcp_state(other_dir / "checkpoints" / f"step_{2 * N:08d}", tmp_path))
        saved = json.loads((other_dir / "checkpoints" / f"step_{2 * N:08d}" / "trainer.json").read_text())
        assert saved["step"] == 2 * N and saved["position"] == 2 * N * 16
    # The optimizer state is really in there (AdamW moments for every parameter).
    assert any("exp_avg" in str(k) for k in _flat_keys(state_a["optim"]))
    # The metrics of the resumed run continue from step N, with no duplicated steps.
    steps = [r["step"] for r in train_records(b_dir)]
    assert steps == sorted(set(steps)) and steps[-1] == 2 * N


def _flat_keys(d, prefix=""):
    for k, v in d.items():
        yield f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flat_keys(v, f"{prefix}{k}.")


# ---- (3) early stopping ----------------------------------------------------------------------


def test_early_stopping_stops_a_diverging_run(tmp_path, fast):
    trainer, summary = fit("gpt-tiny", fast, tmp_path / "run", "optim.lr=10.0", "schedule.name=constant",
                           "train.eval_every=2", "train.eval_batches=2", "train.early_stopping=2",
                           "train.max_steps=40")
    assert summary["stopped_by"] == "early_stopping"
    assert summary["steps"] < 40
    evals = trainer.state.evals
    best = min(e["val_loss"] for e in evals)
    assert summary["best_step"] == next(e["step"] for e in evals if e["val_loss"] == best)
    # It stopped exactly when `patience` evaluations in a row had not improved on the best.
    assert [e["step"] for e in evals][-1] == summary["steps"]
    assert all(e["val_loss"] >= best for e in evals[-2:]) and evals[-3]["val_loss"] == best
    assert summary["val_loss"] > summary["unigram_loss"]  # it really did diverge


# ---- (4) train_fraction ----------------------------------------------------------------------


def test_train_fraction_is_a_deterministic_subset(fast):
    from scaletrain.data.loader import SampleOrder

    def task(*overrides):
        cfg = load_config("gpt-tiny", [*fast, *overrides])
        return build_task(cfg, torch.device("cpu"))[0]

    one, two = task("data.train_fraction=0.1"), task("data.train_fraction=0.1")
    windows = len(one.train)  # all the windows of the training split
    assert windows > 1000
    assert len(one.order) == len(two.order) == round(0.1 * windows)
    drawn = one.order.take(0, 3 * len(one.order) + 7)  # three epochs and a bit
    assert np.array_equal(drawn, two.order.take(0, 3 * len(two.order) + 7))
    assert len(set(drawn.tolist())) == len(one.order)  # only ~10% of the windows, all of them
    assert drawn.max() < windows
    # The subset does not move with the seed; the order does.
    other = SampleOrder(windows, seed=7, fraction=0.1)
    reseeded = other.take(0, len(other))
    assert set(reseeded.tolist()) == set(drawn.tolist())
    assert not np.array_equal(reseeded, drawn[: len(reseeded)])
    assert len(set(SampleOrder(windows, seed=7).take(0, windows).tolist())) == windows
    # A batch comes from the subset too.
    x, y = one.train_batch(0, 4)
    assert x.shape == (4, 64) and torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(x, one.train.batch(drawn[:4])[0])


# ---- (5) mlp-digits --------------------------------------------------------------------------


def test_mlp_digits_preset_accuracy(tmp_path, fast):
    trainer, summary = fit("mlp-digits", fast, tmp_path / "run")
    assert summary["steps"] == trainer.cfg.train.max_steps
    assert summary["val_accuracy"] >= 0.97  # deterministic for the preset's seed (0.981 measured)
    assert summary["val_loss"] < 0.1
    assert summary["dataset"] == "digits"


# ---- (6) MNIST IDX files ---------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _fake_mnist(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(count, 28, 28))  # dim noise
    for i, c in enumerate(labels):
        r, col = 3 + (c // 5) * 12, 1 + (c % 5) * 5
        images[i, r : r + 5, col : col + 4] = 255  # a bright square whose place is the class
    return images, labels


def test_mnist_idx_directory(tmp_path, fast):
    rng = np.random.default_rng(0)
    data = tmp_path / "mnist"
    data.mkdir()
    for prefix, count in (("train", 200), ("t10k", 50)):
        images, labels = _fake_mnist(count, rng)
        _write_idx(data / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(data / f"{prefix}-labels-idx1-ubyte.gz", labels)
    _, summary = fit("mlp-digits", fast, tmp_path / "run", f"data.path={data}", "train.max_steps=60",
                     "train.eval_every=0", "optim.lr=3e-3")
    assert summary["dataset"] == "mnist"
    assert summary["steps"] == 60
    assert summary["val_accuracy"] >= 0.9
    spec = json.loads((tmp_path / "run" / "model_config.json").read_text())
    assert spec["args"]["input_dim"] == 784 and spec["args"]["num_classes"] == 10


# ---- (7) the Python API ----------------------------------------------------------------------


def test_python_api_example(tmp_path, fast):
    from torch import nn
    from torch.utils.data import TensorDataset

    from scaletrain import Classification, Trainer
    from scaletrain.data.images import read_digits, stratified_split

    pixels, labels = read_digits()  # the 8x8 digits shipped with scaletrain
    x, y = torch.from_numpy(pixels), torch.from_numpy(labels)
    tr, va = stratified_split(labels, 0.2, seed=0)
    train_set, val_set = TensorDataset(x[tr], y[tr]), TensorDataset(x[va], y[va])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

    run_dir = tmp_path / "my-mlp"
    cfg = load_config("mlp-digits", [*fast, *QUIET, "train.max_steps=300", "optim.lr=3e-3",
                                     "schedule.name=constant", f"train.run_dir={run_dir}"])
    trainer = Trainer.from_config(cfg, model, Classification(train_set, val_set, seed=cfg.train.seed))
    summary = trainer.fit()

    assert summary["val_accuracy"] >= 0.95
    assert summary["steps"] == 300 and summary["samples_per_second"] > 0
    saved = load_file(run_dir / "model.safetensors")
    assert saved.keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(saved[name], tensor), name
    assert json.loads((run_dir / "model_config.json").read_text())["name"] == "custom"
    assert (run_dir / "summary.json").is_file() and (run_dir / "config.yaml").is_file()


# ---- (8) an occupied run folder --------------------------------------------------------------


def test_fresh_run_in_an_occupied_folder_is_refused(tmp_path, fast):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text('{"keep": true}')
    cfg = load_config("mlp-digits", [*fast, f"train.run_dir={run_dir}", "train.max_steps=5"])
    with pytest.raises(UserError, match="train.run_dir"):
        build_trainer(cfg)

    from torch import nn

    from scaletrain import Classification, Trainer

    data = torch.utils.data.TensorDataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(UserError, match="train.run_dir"):
        Trainer.from_config(cfg, nn.Linear(2, 2), Classification(data, data, seed=0))
    assert [p.name for p in run_dir.iterdir()] == ["summary.json"]
    assert (run_dir / "summary.json").read_text() == '{"keep": true}'
    # An empty folder is not occupied.
    empty = tmp_path / "empty"
    empty.mkdir()
    build_trainer(load_config("mlp-digits", [*fast, f"train.run_dir={empty}"]))
    shutil.rmtree(empty)
