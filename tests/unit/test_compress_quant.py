"""int8 quantization (torchao and ONNX Runtime), ONNX export and the distillation loss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scaletrain.compress.distill import DistillationTask, kd_loss
from scaletrain.compress.export import OrtModel, export_onnx, max_abs_diff, quantize_onnx_int8
from scaletrain.compress.quantize import int8_tensors, load_int8, quantize_int8, save_int8
from scaletrain.models import build_model


def tiny_gpt():
    torch.manual_seed(0)
    return build_model("gpt", dict(vocab_size=97, seq_len=16, n_layer=2, n_head=2, d_model=32, rope=True)).eval()


def tiny_mlp():
    torch.manual_seed(0)
    return build_model("mlp", dict(input_dim=12, num_classes=5, hidden=[64, 32])).eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("method", ["int8-dynamic", "int8-weight"])
def test_torchao_int8_stays_close_and_round_trips(tmp_path, method):
    model = tiny_gpt()
    q = quantize_int8(model, method)
    x = torch.randint(0, 97, (2, 16))
    ref = model(x)
    assert 0 < _rel(q(x), ref) < 0.02  # changed, but within int8 rounding
    stored = int8_tensors(q)
    assert stored["blocks.0.mlp.fc.weight"].dtype == torch.int8
    assert stored["blocks.0.mlp.fc.weight.scale"].shape == (128,)
    assert "tok_emb.weight" not in stored and stored["lm_head.weight"].dtype == torch.int8  # tied: once
    path = save_int8(q, model, {"name": "gpt", "args": model.args_dict()}, tmp_path)
    fp32_bytes = 4 * model.num_params()
    assert path.stat().st_size < 0.30 * fp32_bytes
    again = load_int8(tmp_path, method)
    torch.testing.assert_close(again(x), q(x), rtol=0, atol=0)


def test_kd_loss_reduces_to_its_parts():
    torch.manual_seed(0)
    s, t = torch.randn(4, 6, 11), torch.randn(4, 6, 11)
    y = torch.randint(0, 11, (4, 6))
    ce = F.cross_entropy(s.flatten(0, 1), y.flatten())
    assert kd_loss(s, t, y, temperature=3.0, alpha=0.0) == pytest.approx(float(ce), rel=1e-6)
    assert float(kd_loss(s, s, y, temperature=2.0, alpha=1.0)) == pytest.approx(0.0, abs=1e-6)
    # alpha=1: T² · mean over positions of KL(p_t || p_s) at temperature T, written out.
    T = 2.0
    pt, ps = F.softmax(t / T, -1), F.softmax(s / T, -1)
    kl = (pt * (pt.log() - ps.log())).sum(-1).mean() * T * T
    assert float(kd_loss(s, t, y, temperature=T, alpha=1.0)) == pytest.approx(float(kl), rel=1e-5)


def test_distillation_task_packs_teacher_logits_next_to_labels():
    teacher = tiny_mlp()

    class Base:
        unit = "samples"
        num_train_samples = 10

        def train_batch(self, position, batch_size):
            g = torch.Generator().manual_seed(position)
            return torch.randn(batch_size, 12, generator=g), torch.arange(batch_size) % 5

    task = DistillationTask(Base(), teacher, temperature=2.0, alpha=0.3)
    x, packed = task.train_batch(0, 4)
    assert packed.shape == (4, 6)
    torch.testing.assert_close(packed[:, :5], teacher(x))
    assert packed[:, 5].tolist() == [0, 1, 2, 3]
    logits = torch.randn(4, 5)
    expected = kd_loss(logits, teacher(x), torch.arange(4), temperature=2.0, alpha=0.3)
    torch.testing.assert_close(task.loss(logits, packed), expected)


@pytest.mark.slow  # the torch.onnx (dynamo) export takes ~10-30 s
def test_onnx_export_matches_pytorch_and_int8_stays_close(tmp_path):
    model = tiny_mlp()
    path = export_onnx(model, tmp_path / "m.onnx")
    fp32 = OrtModel(path)
    assert max_abs_diff(model, fp32) < 1e-4
    x = torch.randn(7, 12)  # another batch size than the export's example: the batch is dynamic
    assert fp32(x).shape == (7, 5)
    q = OrtModel(quantize_onnx_int8(path, tmp_path / "q.onnx"))
    assert 1e-5 < max_abs_diff(model, q) and _rel(q(x), model(x)) < 0.05
    import onnx

    weights = [i for i in onnx.load(str(tmp_path / "q.onnx")).graph.initializer if len(i.dims) == 2]
    assert weights and all(i.data_type == onnx.TensorProto.INT8 for i in weights)
    # 3,232 weights become int8; per-channel scales, zero points and fp32 biases stay (tiny model).
    assert (tmp_path / "q.onnx").stat().st_size < 0.6 * path.stat().st_size


@pytest.mark.slow
def test_gpt_onnx_export_has_dynamic_batch_and_sequence(tmp_path):
    model = tiny_gpt()
    ort = OrtModel(export_onnx(model, tmp_path / "g.onnx"))
    for shape in ((1, 16), (3, 9)):
        x = torch.randint(0, 97, shape)
        torch.testing.assert_close(ort(x), model(x), rtol=1e-4, atol=1e-4)
    assert math.isfinite(max_abs_diff(model, ort))
