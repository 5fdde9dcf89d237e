"""The GPT family in `transformers`: `GPT2LMHeadModel` (learned positions, `rope: false`) and
`GPTNeoXForCausalLM` (rotary positions, `rope: true`).

GPT-2 stores its matrices as Conv1D ([in, out], transposed) and its fused `c_attn` as [all q][all
k][all v]; our `qkv` rows go head by head ([h0: q k v][h1: q k v]), so they are permuted. GPT-NeoX's
`query_key_value` is laid out head by head like ours, and its rotation is "rotate half" like ours:
its weights map without a permutation. Both always have LayerNorm biases (and GPT-2 linear
biases): a model with `bias: false` exports them as zeros, and imports a file only when they are.

The MLP's activation maps both ways: tanh-approximated GELU (`activation: gelu`) is `gelu_new`,
ReLU² (`activation: relu2`, the `gpt` preset's) is transformers' `relu2`.

Refused on import (by key): another activation than those two, a LayerNorm epsilon other than
1e-5, different dropout rates where we have one, GPT-2's per-layer attention scaling, NeoX's
parallel residual, partial rotary or a rotary base other than 10,000.
Refused on export: RMSNorm (`norm: rmsnorm`), QK-norm (`qk_norm: true`: neither architecture
normalises queries and keys), pruned heads (`layer_heads`: a head count that leaves hidden_size /
num_attention_heads wrong) and per-layer MLP widths (`n_inner` is one number); a pruned MLP of one
width for every layer exports.
"""

from __future__ import annotations

from scaletrain.errors import UserError
from scaletrain.models.family import DataShape, HFMapping
from scaletrain.models.hfmap import TensorMap, fused_qkv_rows, hf_context, hf_value, refuse

_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_RELU2 = "relu2"  # transformers' ReLUSquaredActivation
_TO_HF_ACTIVATION = {"gelu": "gelu_new", "relu2": _RELU2}  # model.activation -> hidden_act / activation_function
_ACTIVATIONS_WHY = "the GPT family's MLP uses GELU with the tanh approximation (gelu_new) or ReLU² (relu2)"
_DROPPED = ("auto_map", "_name_or_path", "transformers_version", "rope_parameters", "torch_dtype", "dtype")


def _one_dropout(c: dict, keys: tuple[str, ...]) -> float:
    rates = {k: float(hf_value(c, k, (int, float), 0.0, positive=False)) for k in keys if k in c}
    if len(set(rates.values())) > 1:
        raise UserError(f"config.json: dropout rates {rates} differ; the GPT family has one (model.dropout)")
    rate = next(iter(rates.values()), 0.0)
    if not 0.0 <= rate < 1.0:
        raise UserError(f"config.json: dropout {rate} must be in [0, 1)")
    return rate


def _eps(c: dict, key: str) -> None:
    eps = hf_value(c, key, (int, float), 1e-5)
    if abs(eps - 1e-5) > 1e-12:
        raise UserError(f"config.json: {key} {eps} is not supported: the GPT family's LayerNorm uses 1e-5")


def _activation(c: dict, key: str) -> str:
    refuse(c, key, (*_GELU_TANH, _RELU2), _ACTIVATIONS_WHY)
    return "relu2" if c.get(key) == _RELU2 else "gelu"


def args_from_hf(c: dict, data: DataShape) -> dict:
    neox = c.get("model_type") == "gpt_neox"
    d = hf_value(c, "hidden_size" if neox else "n_embd")
    heads = hf_value(c, "num_attention_heads" if neox else "n_head")
    if d % heads:
        raise UserError(f"config.json: the width {d} is not a multiple of the {heads} heads")
    if neox:
        activation = _activation(c, "hidden_act")
        refuse(c, "use_parallel_residual", (False,), "the GPT family's blocks are sequential (attention, then MLP)")
        _eps(c, "layer_norm_eps")
        rope = c.get("rope_parameters") or {}
        if not isinstance(rope, dict):
            raise UserError("config.json: rope_parameters must be an object")
        partial = rope.get("partial_rotary_factor", c.get("rotary_pct", 1.0 if "rope_parameters" in c else 0.25))
        if partial != 1.0:
            raise UserError(f"config.json: partial_rotary_factor {partial} is not supported: the GPT family "
                            "rotates every dimension of a head")
        base = rope.get("rope_theta", c.get("rope_theta", c.get("rotary_emb_base", 10000)))
        if base != 10000:
            raise UserError(f"config.json: rotary base {base} is not supported: the GPT family's is 10000")
        refuse(c, "rope_scaling", (None,), "the GPT family has no rotary scaling")
        context = hf_context(c, data.seq_len)
        return {
            "vocab_size": hf_value(c, "vocab_size"), "seq_len": data.seq_len or context,
            "n_layer": hf_value(c, "num_hidden_layers"), "n_head": heads, "d_model": d,
            "d_ff": hf_value(c, "intermediate_size"),
            "dropout": _one_dropout(c, ("attention_dropout", "hidden_dropout")),
            "bias": hf_value(c, "attention_bias", bool, True, positive=False), "norm": "layernorm",
            "tie_embeddings": hf_value(c, "tie_word_embeddings", bool, False, positive=False), "rope": True,
            "activation": activation,
        }
    activation = _activation(c, "activation_function")
    refuse(c, "scale_attn_weights", (True,), "the GPT family scales attention by 1/sqrt(head width)")
    refuse(c, "scale_attn_by_inverse_layer_idx", (False,), "the GPT family scales every layer alike")
    _eps(c, "layer_norm_epsilon")
    positions = hf_value(c, "n_positions")
    if data.seq_len is not None and data.seq_len > positions:
        raise UserError(f"data.seq_len: {data.seq_len} is longer than the model's context (config.json "
                        f"n_positions {positions})")
    return {
        # The learned position table is the checkpoint's: every row of it is kept.
        "vocab_size": hf_value(c, "vocab_size"), "seq_len": positions,
        "n_layer": hf_value(c, "n_layer"), "n_head": heads, "d_model": d,
        "d_ff": hf_value(c, "n_inner", int, None) or 4 * d,
        "dropout": _one_dropout(c, ("resid_pdrop", "embd_pdrop", "attn_pdrop")),
        "bias": True, "norm": "layernorm",
        "tie_embeddings": hf_value(c, "tie_word_embeddings", bool, True, positive=False), "rope": False,
        "activation": activation,
    }


def _uniform(a: dict, key: str, default: int, what: str) -> int:
    values = set(a.get(key) or [default])
    if len(values) > 1:
        raise UserError(f"model.{key}: {a[key]} differ by layer, and {what} is one number for every layer; "
                        "this pruned model cannot be exported to the Hugging Face format")
    return values.pop()


def config_to_hf(a: dict, base: dict | None) -> dict:
    arch = "GPT-NeoX" if a["rope"] else "GPT-2"
    if a["norm"] != "layernorm":
        raise UserError(f"model.norm: {a['norm']}: {arch} uses LayerNorm; a GPT with RMSNorm cannot be "
                        "exported to the Hugging Face format")
    if a.get("qk_norm"):
        raise UserError(f"model.qk_norm: true: {arch} does not normalise queries and keys; a GPT with QK-norm "
                        "cannot be exported to the Hugging Face format")
    act = _TO_HF_ACTIVATION[a.get("activation", "gelu")]  # left out of args_dict at its default
    if _uniform(a, "layer_heads", a["n_head"], "the head count") != a["n_head"]:
        raise UserError(f"model.layer_heads: {a['layer_heads']}: {arch} derives the head width from "
                        "hidden_size / num_attention_heads and cannot hold pruned heads (prune with "
                        "--head-amount 0 to export)")
    d_ff = _uniform(a, "layer_d_ff", a["d_ff"], "the MLP width")
    c = {k: v for k, v in (base or {}).items() if k not in _DROPPED}
    if a["rope"]:
        c.update({
            "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "vocab_size": a["vocab_size"],
            "hidden_size": a["d_model"], "num_hidden_layers": a["n_layer"], "num_attention_heads": a["n_head"],
            "intermediate_size": d_ff, "hidden_act": act, "use_parallel_residual": False,
            "rotary_pct": 1.0, "partial_rotary_factor": 1.0, "rope_theta": 10000.0, "rotary_emb_base": 10000,
            "layer_norm_eps": 1e-5, "attention_bias": a["bias"], "attention_dropout": a["dropout"],
            "hidden_dropout": a["dropout"], "tie_word_embeddings": a["tie_embeddings"],
            "max_position_embeddings": max(a["seq_len"], int(c.get("max_position_embeddings") or 0)),
        })
        return c
    c.update({
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": a["vocab_size"],
        "n_positions": a["seq_len"], "n_embd": a["d_model"], "n_layer": a["n_layer"], "n_head": a["n_head"],
        "n_inner": d_ff, "activation_function": act, "layer_norm_epsilon": 1e-5,
        "resid_pdrop": a["dropout"], "embd_pdrop": a["dropout"], "attn_pdrop": a["dropout"],
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "tie_word_embeddings": a["tie_embeddings"],
    })
    return c


def _linear(ours: str, hf: str, shape: tuple, bias: bool, **kw) -> list[TensorMap]:
    """A linear layer's weight and bias (zeros in HF when our model has no bias)."""
    return [TensorMap(f"{ours}.weight", f"{hf}.weight", **kw),
            TensorMap(f"{ours}.bias" if bias else None, f"{hf}.bias", rows=kw.get("rows"), shape=shape)]


def _norm(ours: str, hf: str, d: int, bias: bool) -> list[TensorMap]:
    return [TensorMap(f"{ours}.weight", f"{hf}.weight"),
            TensorMap(f"{ours}.bias" if bias else None, f"{hf}.bias", shape=(d,))]


def tensors(a: dict, hf_config: dict) -> list[TensorMap]:
    d, heads, bias = a["d_model"], a["n_head"], a["bias"]
    d_ff = (a.get("layer_d_ff") or [a["d_ff"]])[0]
    hd = d // heads
    if hf_config.get("model_type") == "gpt_neox":
        out = [TensorMap("tok_emb.weight", "gpt_neox.embed_in.weight")]
        for i in range(a["n_layer"]):
            p, q = f"blocks.{i}.", f"gpt_neox.layers.{i}."
            out += _norm(p + "norm1", q + "input_layernorm", d, bias)
            out += _norm(p + "norm2", q + "post_attention_layernorm", d, bias)
            if bias:  # attention_bias follows model.bias; the MLP's biases are always there
                out += _linear(p + "attn.qkv", q + "attention.query_key_value", (3 * d,), True)
                out += _linear(p + "attn.proj", q + "attention.dense", (d,), True)
            else:
                out += [TensorMap(p + "attn.qkv.weight", q + "attention.query_key_value.weight"),
                        TensorMap(p + "attn.proj.weight", q + "attention.dense.weight")]
            out += _linear(p + "mlp.fc", q + "mlp.dense_h_to_4h", (d_ff,), bias)
            out += _linear(p + "mlp.proj", q + "mlp.dense_4h_to_h", (d,), bias)
        out += _norm("norm_f", "gpt_neox.final_layer_norm", d, bias)
        if not a["tie_embeddings"]:
            out.append(TensorMap("lm_head.weight", "lm_head.weight", alt=("embed_out.weight",)))
        return out
    out = [TensorMap("tok_emb.weight", "transformer.wte.weight"), TensorMap("pos_emb.weight", "transformer.wpe.weight")]
    qkv_rows = fused_qkv_rows(heads, hd)
    for i in range(a["n_layer"]):
        p, q = f"blocks.{i}.", f"transformer.h.{i}."
        out += _norm(p + "norm1", q + "ln_1", d, bias)
        out += _linear(p + "attn.qkv", q + "attn.c_attn", (3 * d,), bias, rows=qkv_rows, transpose=True)
        out += _linear(p + "attn.proj", q + "attn.c_proj", (d,), bias, transpose=True)
        out += _norm(p + "norm2", q + "ln_2", d, bias)
        out += _linear(p + "mlp.fc", q + "mlp.c_fc", (d_ff,), bias, transpose=True)
        out += _linear(p + "mlp.proj", q + "mlp.c_proj", (d,), bias, transpose=True)
    out += _norm("norm_f", "transformer.ln_f", d, bias)
    if not a["tie_embeddings"]:
        out.append(TensorMap("lm_head.weight", "lm_head.weight"))
    return out


HF = HFMapping(architectures=("GPT2LMHeadModel", "GPTNeoXForCausalLM"), args_from_hf=args_from_hf,
               tensors=tensors, config_to_hf=config_to_hf,
               # causal-mask buffers older GPT-2 / NeoX files saved; the head a tied model may store
               ignored=(r"\.attn\.(masked_)?bias$", r"\.attention\.(masked_)?bias$", r"rotary_emb\.inv_freq$",
                        r"^lm_head\.weight$", r"^embed_out\.weight$"))
