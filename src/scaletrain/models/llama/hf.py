"""The Llama family in `transformers`: `LlamaForCausalLM` (config.json `model_type: llama`).

Names map one to one (`layers.{i}.attention.wq` <-> `model.layers.{i}.self_attn.q_proj`, ...).
wq and wk rows are permuted: our rotary layout is Meta's (pairs 2j, 2j+1 of a head rotate
together), HF's is "rotate half" (pairs j, j + head_dim/2); the permutation is the one of
transformers' convert_llama_weights_to_hf.py, and it moves the pairs without changing any value.

What `LlamaForCausalLM` has that this family has not (refused by key on import): biases
(`attention_bias`, `mlp_bias`), another activation than SiLU, a `head_dim` other than
hidden_size / num_attention_heads, rotary scaling other than Llama 3.1's (`rope_type: llama3`),
attention dropout. What this family has that `LlamaForCausalLM` has not (refused on export):
QK-norm. Dropout is a training setting and is not carried.
"""

from __future__ import annotations

from scaletrain.errors import UserError
from scaletrain.models.family import DataShape, HFMapping
from scaletrain.models.hfmap import TensorMap, hf_context, hf_value, per_head_rows, refuse

_SCALING = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
# Keys of a config.json that describe how it was written or how code is found, not the model.
_DROPPED = ("auto_map", "_name_or_path", "transformers_version", "rope_parameters", "torch_dtype", "dtype")


def _rope(c: dict) -> tuple[float, dict | None]:
    """(theta, Llama 3.1 scaling or None) from `rope_parameters` (transformers 5) or the older
    `rope_theta` + `rope_scaling`."""
    params = c.get("rope_parameters")
    if params is None:
        params = dict(c.get("rope_scaling") or {})
        if "rope_theta" in c:
            params.setdefault("rope_theta", c["rope_theta"])
    if not isinstance(params, dict):
        raise UserError(f"config.json: rope_parameters must be an object, got {params!r:.60}")
    theta = float(hf_value(params, "rope_theta", (int, float), 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind in ("default", None):
        return theta, None
    if kind != "llama3":
        raise UserError(f"config.json: rotary scaling {kind!r} is not supported (the Llama family has "
                        "Llama 3.1's scaling, rope_type llama3, or none)")
    return theta, {k: hf_value(params, k, (int, float)) if k != "original_max_position_embeddings"
                   else hf_value(params, k, int) for k in _SCALING}


def args_from_hf(c: dict, data: DataShape) -> dict:
    d, heads = hf_value(c, "hidden_size"), hf_value(c, "num_attention_heads")
    if d % heads:
        raise UserError(f"config.json: hidden_size {d} is not a multiple of num_attention_heads {heads}")
    head_dim = hf_value(c, "head_dim", int, None)
    if head_dim is not None and head_dim != d // heads:
        raise UserError(f"config.json: head_dim {head_dim} differs from hidden_size / num_attention_heads "
                        f"({d // heads}); the Llama family derives the head width from them")
    refuse(c, "attention_bias", (False,), "the Llama family has no biases")
    refuse(c, "mlp_bias", (False,), "the Llama family has no biases")
    refuse(c, "hidden_act", ("silu",), "the Llama family's MLP is SwiGLU (silu)")
    refuse(c, "attention_dropout", (0, 0.0), "the Llama family has no attention-only dropout")
    refuse(c, "pretraining_tp", (1,), "weights split for tensor parallel are not read (pretraining_tp 1)")
    theta, scaling = _rope(c)
    context = hf_context(c, data.seq_len)
    return {
        "vocab_size": hf_value(c, "vocab_size"), "seq_len": data.seq_len or context,
        "n_layer": hf_value(c, "num_hidden_layers"), "n_head": heads,
        "n_kv_head": hf_value(c, "num_key_value_heads", int, heads), "d_model": d,
        "d_ff": hf_value(c, "intermediate_size"), "rope_theta": theta, "rope_scaling": scaling,
        "qk_norm": False, "tie_embeddings": hf_value(c, "tie_word_embeddings", bool, False, positive=False),
        "norm_eps": float(hf_value(c, "rms_norm_eps", (int, float), 1e-6)), "dropout": 0.0,
    }


def config_to_hf(a: dict, base: dict | None) -> dict:
    if a.get("qk_norm"):
        raise UserError("model.qk_norm: LlamaForCausalLM has no QK-norm; a Llama with qk_norm=true cannot be "
                        "exported to the Hugging Face format")
    c = {k: v for k, v in (base or {}).items() if k not in _DROPPED}
    scaling = a.get("rope_scaling")
    c.update({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": a["vocab_size"],
        "hidden_size": a["d_model"], "intermediate_size": a["d_ff"], "num_hidden_layers": a["n_layer"],
        "num_attention_heads": a["n_head"], "num_key_value_heads": a["n_kv_head"],
        "head_dim": a["d_model"] // a["n_head"], "hidden_act": "silu", "rms_norm_eps": a["norm_eps"],
        "tie_word_embeddings": a["tie_embeddings"], "attention_bias": False, "mlp_bias": False,
        "attention_dropout": 0.0, "pretraining_tp": 1, "rope_theta": a["rope_theta"],
        "rope_scaling": {"rope_type": "llama3", **scaling} if scaling else None,
        # The context the model was made for (the run's seq_len, or more when it started from a
        # checkpoint made for longer): rotary positions work at any length.
        "max_position_embeddings": max(a["seq_len"], int(c.get("max_position_embeddings") or 0)),
    })
    return c


def tensors(a: dict, hf_config: dict) -> list[TensorMap]:
    hd = a["d_model"] // a["n_head"]
    out = [TensorMap("tok_embeddings.weight", "model.embed_tokens.weight")]
    names = (("attention.wq", "self_attn.q_proj", a["n_head"]), ("attention.wk", "self_attn.k_proj", a["n_kv_head"]),
             ("attention.wv", "self_attn.v_proj", None), ("attention.wo", "self_attn.o_proj", None),
             ("feed_forward.w1", "mlp.gate_proj", None), ("feed_forward.w3", "mlp.up_proj", None),
             ("feed_forward.w2", "mlp.down_proj", None), ("attention_norm", "input_layernorm", None),
             ("ffn_norm", "post_attention_layernorm", None))
    for i in range(a["n_layer"]):
        for ours, theirs, heads in names:
            rows = per_head_rows(heads, hd) if heads else None
            out.append(TensorMap(f"layers.{i}.{ours}.weight", f"model.layers.{i}.{theirs}.weight", rows=rows))
    out.append(TensorMap("norm.weight", "model.norm.weight"))
    if not a["tie_embeddings"]:
        out.append(TensorMap("output.weight", "lm_head.weight"))
    return out


HF = HFMapping(architectures=("LlamaForCausalLM",), args_from_hf=args_from_hf, tensors=tensors,
               config_to_hf=config_to_hf,
               # rotary tables some older files saved; the head a tied model may store anyway
               ignored=(r"rotary_emb\.inv_freq$", r"^lm_head\.weight$"))
