"""A plain nanoGPT-style training loop: the yardstick `scaletrain train` is compared with.

Written the way Karpathy's nanoGPT (`model.py`, `train.py`) trains on a CPU: fp32 (nanoGPT runs
without autocast on a CPU), learned absolute positions, LayerNorm without bias, GELU, a head tied
to the token embedding, GPT-2 initialisation, AdamW with `fused=True` (decay on matrices only),
random windows drawn from one token array (`get_batch`), gradient clipping at 1.0, a warm-up and
cosine learning rate, the loss read by the host every `log_interval` steps. Nothing of scaletrain's
is used for the model or the loop; only the prepared tokens are the main job's (the `gpt` preset's
data, read with numpy), so that both train on the same tokens.

The shape is the main job's: the `gpt` preset's layers, heads, width, vocabulary, context and
batch (read from the preset, so that a change of the preset changes both sides).

    python benchmarks/nanogpt_loop.py --seconds 60          # tokens/s, as JSON on stdout

benchmarks/main_job.py runs it side by side with `scaletrain train` (one run before and one after).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


# ---- the model, as nanoGPT's model.py writes it ---------------------------------------------------
class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.n_head, self.n_embd = n_head, n_embd

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, n_embd: int):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=False)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd, bias=False)
        self.mlp = MLP(n_embd)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd),
            wpe=nn.Embedding(block_size, n_embd),
            h=nn.ModuleList([Block(n_embd, n_head) for _ in range(n_layer)]),
            ln_f=nn.LayerNorm(n_embd, bias=False),
        ))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def configure_optimizers(self, weight_decay, learning_rate, betas):
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=True)


# ---- the loop, as nanoGPT's train.py runs it --------------------------------------------------
def preset_shape(preset: str = "gpt") -> dict:
    """The main job's shape, batch, optimizer settings and prepared tokens."""
    from scaletrain.config.load import load_config
    from scaletrain.data.cache import prepared, settings
    from scaletrain.data.shards import TokenShards

    cfg = load_config(preset, ["log.progress=false"])
    d, m, o = cfg.data, cfg.model, cfg.optim
    data_dir = prepared(settings(d), Path(d.cache_dir).expanduser(), progress=False)  # the trainer's own data
    train = TokenShards(data_dir, "train")
    tokens = np.asarray(train[0:len(train)])
    if train.vocab_size <= 65536:  # nanoGPT keeps its tokens as uint16
        tokens = tokens.astype(np.uint16)
    return {"tokens": tokens, "vocab_size": train.vocab_size, "block_size": d.seq_len,
            "n_layer": m.n_layer, "n_head": m.n_head, "n_embd": m.d_model, "batch_size": cfg.train.batch_size,
            "learning_rate": o.lr, "weight_decay": o.weight_decay, "betas": tuple(o.betas),
            "warmup_iters": cfg.schedule.warmup_steps}


def train(seconds: float, shape: dict, seed: int = 1337, log_interval: int = 25) -> dict:
    """Train for `seconds` of wall clock (after the first step, which warms up); tokens/s."""
    torch.manual_seed(seed)
    data, block_size, batch_size = shape["tokens"], shape["block_size"], shape["batch_size"]

    def get_batch():
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
        return x, y

    model = GPT(shape["vocab_size"], block_size, shape["n_layer"], shape["n_head"], shape["n_embd"])
    optimizer = model.configure_optimizers(shape["weight_decay"], shape["learning_rate"], shape["betas"])
    lr_decay_iters, min_lr = 100_000, shape["learning_rate"] / 10

    def get_lr(it):
        if it < shape["warmup_iters"]:
            return shape["learning_rate"] * (it + 1) / (shape["warmup_iters"] + 1)
        ratio = min(1.0, (it - shape["warmup_iters"]) / (lr_decay_iters - shape["warmup_iters"]))
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (shape["learning_rate"] - min_lr)

    X, Y = get_batch()
    it, began, loss_value = 0, None, float("nan")
    while True:
        lr = get_lr(it)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = model(X, Y)
        X, Y = get_batch()  # the next batch, as nanoGPT fetches it while the GPU works
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        it += 1
        if it % log_interval == 0:
            loss_value = loss.item()
        if began is None:
            began, first = time.perf_counter(), it
        elif time.perf_counter() - began >= seconds:
            break
    elapsed = time.perf_counter() - began
    steps = it - first
    return {"tokens_per_second": steps * batch_size * block_size / elapsed, "steps": steps, "seconds": elapsed,
            "loss": loss_value, "threads": torch.get_num_threads(), "precision": "fp32",
            "parameters": sum(p.numel() for p in model.parameters())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="timed training seconds (default 60)")
    p.add_argument("--preset", default="gpt", help="the scaletrain preset whose shape and data to use")
    a = p.parse_args(argv)
    shape = preset_shape(a.preset)
    result = train(a.seconds, shape)
    print(json.dumps({**result, "shape": {k: v for k, v in shape.items() if k != "tokens"}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
