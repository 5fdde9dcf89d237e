"""Run under torchrun by test_layouts.py: one pipelined step of a tiny GPT at train.precision=bf16,
recording the dtype every matmul of this rank's stage computes in (a forward hook on each
nn.Linear) and the dtype of the gradients and weights it leaves. Writes OUT/rank<r>.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from scaletrain.models import build_model, get_family
from scaletrain.parallel.config import ParallelConfig
from scaletrain.parallel.dist import init_distributed, shutdown
from scaletrain.parallel.layout import build_layout


def main(out: Path, strategy: str) -> None:
    info = init_distributed("cpu", 120.0)
    torch.manual_seed(0)
    model = build_model("gpt", {"vocab_size": 64, "seq_len": 16, "n_layer": 2, "n_head": 2, "d_model": 32})
    loss_fn = lambda logits, y: F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())  # noqa: E731
    layout = build_layout(model, get_family("gpt"), ParallelConfig(strategy=strategy), info, precision="bf16",
                          compile=False, loss_fn=loss_fn)
    matmuls = []
    for module in layout.trained.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda m, args, output: matmuls.append(str(output.dtype)))
    tokens = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(1))
    loss = layout.forward_backward([(tokens[:, :-1], tokens[:, 1:])])
    params = [p for p in layout.trained.parameters()]
    report = {"matmul_dtypes": sorted(set(matmuls)), "matmuls": len(matmuls), "loss": float(loss),
              "grad_dtypes": sorted({str(p.grad.dtype) for p in params if p.grad is not None}),
              "weight_dtypes": sorted({str(p.dtype) for p in params}),
              "grads": sum(p.grad is not None for p in params), "params": len(params)}
    (out / f"rank{info.rank}.json").write_text(json.dumps(report))
    del layout, model
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
