"""A `transformers` causal LM behind the family interface: forward(idx) -> logits, generate,
args_dict/from_args_dict (the folder's config.json, recorded, so the model rebuilds without it).

The `transformers` model is `self.hf`: its parameters are named `hf.<transformers' name>`.
Nothing here reads a file: the weights are loaded by scaletrain.train.pretrained, through
scaletrain.untrusted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from scaletrain.errors import UserError
from scaletrain.extras import require
from scaletrain.models.lm import sample

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# config.json keys that say how the file was written or where code lives, not what the model is.
_NOT_ARCHITECTURE = ("model_type", "auto_map", "transformers_version", "_name_or_path")


@dataclass
class HFArgs:
    config: dict  # the folder's config.json
    seq_len: int  # the training context (the model's own may be longer)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not isinstance(self.config, dict) or not isinstance(self.config.get("model_type"), str):
            raise UserError("model config: 'config' must be a config.json object with a model_type")
        vocab = self.config.get("vocab_size")
        if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab <= 0:
            raise UserError(f"config.json: vocab_size must be a positive integer, got {vocab!r:.40}")
        if not isinstance(self.seq_len, int) or isinstance(self.seq_len, bool) or self.seq_len <= 0:
            raise UserError(f"model.seq_len must be a positive integer, got {self.seq_len!r}")
        if self.dtype not in DTYPES:
            raise UserError(f"model.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    @property
    def vocab_size(self) -> int:
        return self.config["vocab_size"]


def hf_config(config: dict):
    """A `transformers` config object from config.json's content, for an architecture that
    `transformers` itself defines (never code from the folder)."""
    transformers = require("transformers", "hf", "model.name=hf")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config["model_type"]
    if model_type not in CONFIG_MAPPING:
        raise UserError(f"config.json: model_type {model_type!r} is not an architecture transformers "
                        f"{transformers.__version__} defines; scaletrain never runs code from a model folder "
                        "(trust_remote_code), so it cannot build this model")
    kwargs = {k: v for k, v in config.items() if k not in _NOT_ARCHITECTURE}
    try:
        return transformers.AutoConfig.for_model(model_type, **kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"config.json: transformers cannot read it as a {model_type} config ({exc})") from None


class HFCausalLM(nn.Module):
    def __init__(self, args: HFArgs):
        super().__init__()
        transformers = require("transformers", "hf", "model.name=hf")
        self.args = args
        config = hf_config(args.config)
        try:
            model = transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=False)
        except ValueError as exc:
            raise UserError(f"config.json: a {args.config['model_type']} is not a causal language model "
                            f"transformers can build ({str(exc).splitlines()[0][:200]})") from None
        self.hf = model.to(DTYPES[args.dtype])

    def forward(self, idx: torch.Tensor, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        if doc_ids is not None:
            raise ValueError("model.name=hf has no packed-document attention masks (data.document_mask)")
        return self.hf(input_ids=idx, use_cache=False).logits

    def num_layers(self) -> int:
        from scaletrain.models.hf.parallelize import decoder_layers

        layers = decoder_layers(self)
        return len(layers) if layers is not None else 0

    def flops_per_token(self) -> float:
        """6 x matmul weights + 12·L·d·T for attention at full context (the GPT family's count;
        see models/gpt/model.py), with d the hidden width."""
        n = sum(m.weight.numel() for m in self.modules() if _is_matmul(m))
        d = int(self.args.config.get("hidden_size") or self.args.config.get("n_embd") or 0)
        return float(6 * n + 12 * self.num_layers() * d * self.args.seq_len)

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Autoregressive sampling within the training context (models/lm.py)."""
        return sample(self, idx, max_new_tokens, context=self.args.seq_len, temperature=temperature, top_k=top_k,
                      generator=generator)

    def args_dict(self) -> dict:
        return {"config": self.args.config, "seq_len": self.args.seq_len, "dtype": self.args.dtype}

    @classmethod
    def from_args_dict(cls, d: dict) -> "HFCausalLM":
        from scaletrain.models.args import args_from_dict

        return cls(args_from_dict(HFArgs, d, "model"))


def _is_matmul(m: nn.Module) -> bool:
    """nn.Linear, or transformers' Conv1D (GPT-2's transposed linear)."""
    return isinstance(m, nn.Linear) or (type(m).__name__ == "Conv1D" and hasattr(m, "weight"))
