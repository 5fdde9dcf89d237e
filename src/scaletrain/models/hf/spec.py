"""A `transformers` model's arithmetic for `scaletrain plan`: parameters and FLOPs counted from the
module itself, activation memory estimated as for a pre-norm decoder block (the GPT family's
count, models/gpt/spec.py, with the model's own MLP width). Not measured against peaks: an
estimate, for an architecture scaletrain does not know tensor by tensor."""

from __future__ import annotations

from dataclasses import dataclass

from scaletrain.models.hf.model import HFCausalLM, _is_matmul
from scaletrain.models.hf.parallelize import decoder_layers


@dataclass(frozen=True)
class HFSpec:
    params: int
    block_params: int
    n_layer: int
    matmul_params: int
    flops_per_unit: float
    units_per_sample: int
    hidden: int
    ffn: int
    vocab: int
    tp_params: int = 0
    kind: str = "hf"

    def supports_tp(self, tp: int) -> bool:
        return tp == 1

    def activation_bytes(self, micro: int, precision: str, ac: bool, tp: int = 1) -> tuple[float, float]:
        """Per token and block, fp32: norm outputs 2d, q k v 3d, attention output 2d, residual d,
        block output d, the MLP's hidden 2·ffn (3·ffn for a gated MLP is within the estimate's
        error); the loss head keeps log-softmax (V) and two more V-sized gradients in backward.
        bf16 halves the block tensors and adds a bf16 copy of each matmul weight."""
        m, d, ff, V = micro * self.units_per_sample, self.hidden, self.ffn, self.vocab
        width = 4 if precision != "bf16" else 2
        per_block = m * width * (9 * d + 2 * ff)
        weights = 2.0 * self.matmul_params if precision == "bf16" else 0.0
        head_saved, head_peak = m * 4 * V, m * 8 * V
        backward = m * 4 * (2 * ff + 3 * d)
        if ac:
            return self.n_layer * m * 4 * d + m * 4 * d + head_saved + weights, head_peak + per_block + backward
        return self.n_layer * per_block + m * 4 * d + head_saved + weights, head_peak + backward


def spec(model: HFCausalLM) -> HFSpec:
    layers = decoder_layers(model)
    c = model.args.config
    d = int(c.get("hidden_size") or c.get("n_embd") or 0)
    ffn = int(c.get("intermediate_size") or c.get("n_inner") or 4 * d)
    return HFSpec(
        params=sum(p.numel() for p in model.parameters()),
        block_params=sum(p.numel() for p in layers[0].parameters()) if layers is not None else 0,
        n_layer=len(layers) if layers is not None else 0,
        matmul_params=sum(m.weight.numel() for m in model.modules() if _is_matmul(m)),
        flops_per_unit=model.flops_per_token(), units_per_sample=model.args.seq_len, hidden=d, ffn=ffn,
        vocab=model.args.vocab_size)

