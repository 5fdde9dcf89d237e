"""The Llama's arithmetic for `scaletrain plan`: parameters, FLOPs and activation memory.

Activation memory is counted tensor by tensor: the tensors autograd saves for backward in the
forward of `model.py`, listed per token below and checked against the bytes
`torch.autograd.graph.saved_tensors_hooks` sees (tests/unit/test_llama.py) in fp32 and bf16.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from scaletrain.models.llama.model import Llama

# The matrices tensor parallel shards (parallelize.py's plan), per block.
TP_LINEARS = ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
              "feed_forward.w1", "feed_forward.w3", "feed_forward.w2")


@dataclass(frozen=True)
class LlamaSpec:
    """One Llama instance's numbers (the `ModelSpec` protocol of models/family.py)."""

    params: int
    block_params: int
    n_layer: int
    tp_params: int
    matmul_params: int
    flops_per_unit: float
    units_per_sample: int  # seq_len
    hidden: int  # d_model
    n_head: int
    n_kv_head: int
    head_dim: int
    d_ff: int
    vocab: int
    qk_norm: bool
    dropout: float
    kind: str = "llama"

    @property
    def attention_shape(self) -> tuple[int, int, int]:  # the blocks call models.attention.causal_attention
        return self.n_head, self.n_kv_head, self.head_dim

    def supports_tp(self, tp: int) -> bool:
        """parallelize.check_tp's rule: whole heads and MLP shares per rank, no QK-norm."""
        if tp > 1 and self.qk_norm:
            return False
        return self.n_head % tp == 0 and self.n_kv_head % tp == 0 and self.d_ff % tp == 0

    def block_saved_bytes(self, tokens: int, precision: str, tp: int = 1) -> float:
        """Bytes one block saves for backward over `tokens` tokens (one rank of `tp`).

        Per token, d = d_model, kv = n_kv_head·head_dim (k and v are narrower than q under
        grouped-query attention), H = n_head, K = n_kv_head, ff = d_ff. fp32:

        - replicated over tp ranks: the block input (the attention norm's input) d, the
          attention norm's normalised x before its weight d, its output (the input of wq, wk, wv)
          d, the residual after attention d, the same two norm tensors d + d before the MLP, and
          each norm's 1/rms 1 + 1: 6d + 2;
        - split over tp ranks: the rotated q d and k kv and v kv (what SDPA keeps), SDPA's
          output d (kept by wo: the transpose back is a view, no copy), its log-sum-exp H,
          SwiGLU's gate w1·x, silu(gate), up w3·x and their product (kept by w2): 4·ff;
          QK-norm adds, for q and k, the projection before the norm d + kv, the normalised
          tensor d + kv and 1/rms H + K.

        bf16 (autocast): norms and the residual stream stay fp32 (the 4 d-sized norm tensors
        and the 1/rms), every linear input is a fresh bf16 copy (the attention norm's output is
        cast three times, for wq, wk and wv; the MLP norm's twice, for w1 and w3), and the
        split tensors are bf16 except the log-sum-exp; QK-norm's pre-norm copies are fp32 (its
        normalisation upcasts) and its normalised tensors bf16.

        Dropout > 0 (attention dropout leaves SDPA's flash kernel for the math one): the
        residual dropouts keep 2d, the math kernel keeps q, k and v repeated to all heads and
        its output (4d instead of 2d + 2kv + H) and three T x T score tensors per head.
        """
        d, kv, H, K, ff = self.hidden, self.n_kv_head * self.head_dim, self.n_head, self.n_kv_head, self.d_ff
        T = self.units_per_sample
        if precision == "bf16":
            full = 4 * 4 * d + 2 * 5 * d + 4 * 2
            split = 2 * (d + 2 * kv + d + 4 * ff) + 4 * H
            if self.qk_norm:
                split += 4 * (d + kv) + 2 * (d + kv) + 4 * (H + K)
        else:
            full = 4 * (6 * d + 2)
            split = 4 * (d + 2 * kv + d + H + 4 * ff)
            if self.qk_norm:
                split += 4 * (2 * (d + kv) + H + K)
        if self.dropout > 0:
            full += 4 * 2 * d
            split += 4 * (2 * d - 2 * kv - H + 3 * H * T)
        return tokens * (full + split / tp)

    def outside_saved_bytes(self, tokens: int, precision: str) -> float:
        """Bytes saved outside the blocks over `tokens` tokens: the token ids (int64, kept by the
        embedding), the last block's output d, the final norm's normalised x d and 1/rms, and its
        output, the head's input (d fp32, or a 2d-byte bf16 copy under autocast); dropout after
        the embedding keeps d more."""
        d = self.hidden
        head_input = 2 * d if precision == "bf16" else 4 * d
        drop = 4 * d if self.dropout > 0 else 0
        return tokens * (8 + 4 * (2 * d + 1) + head_input + drop)

    def activation_bytes(self, micro: int, precision: str, ac: bool, tp: int = 1) -> tuple[float, float]:
        """(saved for backward, transient peak on top) of one micro-batch, bytes per rank.

        saved = blocks (block_saved_bytes) + outside the blocks (outside_saved_bytes) + the loss
        head (log-softmax, V fp32 per token) + under bf16 autocast one bf16 copy of every matmul
        weight (the sharded ones split over tp ranks). Activation checkpointing keeps each
        block's input (d fp32 per token) instead, and recomputes one block at a time in backward.
        Transient: the loss head's buffers (logits in forward, two more V-sized gradients in
        backward: 2V fp32, 10V bytes under bf16 as for the GPT) and the gradients in flight in a
        block's backward: SwiGLU's three d_ff-wide ones and those of q, k, v (d + 2kv), fp32.
        """
        m = micro * self.units_per_sample
        kv = self.n_kv_head * self.head_dim
        block = self.block_saved_bytes(m, precision, tp)
        outside = self.outside_saved_bytes(m, precision)
        head_saved, head_peak = m * 4 * self.vocab, m * (10 if precision == "bf16" else 8) * self.vocab
        weights = 0.0
        if precision == "bf16":
            weights = 2 * (self.tp_params / tp + self.matmul_params - self.tp_params)
        backward = m * 4 * (3 * self.d_ff + self.hidden + 2 * kv) / tp
        if ac:
            saved = self.n_layer * m * 4 * self.hidden + outside + head_saved + weights
            return saved, head_peak + block + backward
        return self.n_layer * block + outside + head_saved + weights, head_peak + backward


def llama_spec(model: nn.Module) -> LlamaSpec:
    """The spec of a built Llama (on any device; the meta device costs no memory)."""
    if not isinstance(model, Llama):
        raise TypeError(f"llama_spec needs a Llama, got {type(model).__name__}")
    a = model.args
    block = model.layers[0]
    tp = sum(block.get_submodule(name).weight.numel() for name in TP_LINEARS) * a.n_layer
    matmul = sum(mod.weight.numel() for mod in model.modules() if isinstance(mod, nn.Linear))
    return LlamaSpec(
        params=sum(p.numel() for p in model.parameters()),
        block_params=sum(p.numel() for p in block.parameters()),
        n_layer=a.n_layer, tp_params=tp, matmul_params=matmul, flops_per_unit=model.flops_per_token(),
        units_per_sample=a.seq_len, hidden=a.d_model, n_head=a.n_head, n_kv_head=a.n_kv_head,
        head_dim=a.head_dim, d_ff=a.d_ff, vocab=a.vocab_size, qk_norm=a.qk_norm, dropout=a.dropout)
