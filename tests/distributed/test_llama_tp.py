"""The Llama's tensor-parallel plan with real DTensor shards on 2 gloo ranks (torchrun): logits and
gradients equal the one-process model's, with grouped-query attention and packed documents.

The test launches this file under torchrun; each rank runs `worker()`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.dist, pytest.mark.slow]


def test_tp_plan_matches_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           __file__, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    lines = [Path(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert lines == ["ok\n", "ok\n"], lines


def worker(out: Path) -> None:
    import gc

    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    from scaletrain.models.llama.family import FAMILY
    from scaletrain.models.llama.model import Llama, LlamaArgs

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (2,))
    torch.manual_seed(0)
    args = LlamaArgs(vocab_size=61, seq_len=16, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=48)
    ref, tp = Llama(args), Llama(args)
    tp.load_state_dict(ref.state_dict())
    FAMILY.plan.check_tp(tp, 2)
    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    for block in FAMILY.plan.blocks(tp):
        parallelize_module(block, mesh, {name: styles[style]() for name, style in FAMILY.plan.tp_plan.items()})
    assert tp.layers[0].attention.wk.weight.to_local().shape == (8, 32)  # one kv head per rank
    idx = torch.randint(0, 61, (2, 16))
    doc_ids = torch.tensor([[0] * 5 + [1] * 11, [0] * 16])
    for kw in ({}, {"doc_ids": doc_ids}):
        a, b = ref(idx, **kw), tp(idx, **kw)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        a.square().mean().backward()
        b.square().mean().backward()
        for (name, p), (_, q) in zip(ref.named_parameters(), tp.named_parameters()):
            grad = q.grad.full_tensor() if hasattr(q.grad, "full_tensor") else q.grad
            torch.testing.assert_close(grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
        ref.zero_grad()
        tp.zero_grad()
    (out / f"rank{dist.get_rank()}.txt").write_text("ok\n")
    del ref, tp
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
