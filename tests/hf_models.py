"""Tiny Hugging Face model folders built from configs, for the tests: nothing is downloaded.

Each folder is what `save_pretrained` writes (config.json, model.safetensors, generation_config.json)
plus, optionally, a tokenizer (tokenizer.json + tokenizer_config.json): a byte-level BPE of a few
hundred tokens trained here on the embedded corpus, with `<|endoftext|>` as its end of text.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the network, whatever a library tries
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

VOCAB = 320
EOT = "<|endoftext|>"


def tokenizer_object(vocab: int = VOCAB):
    """A byte-level BPE trained on a slice of the embedded corpus (deterministic)."""
    from scaletrain.data import corpus
    from scaletrain.data.tokenizer import train_tokenizer

    texts = [corpus.read_text(p) for p in corpus.stdlib_files()[:40]]
    return train_tokenizer(texts, vocab)


def save_tokenizer(folder: Path, vocab: int = VOCAB) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer_object(vocab), eos_token=EOT, bos_token=EOT,
                                   unk_token=EOT)
    fast.save_pretrained(str(folder))


def _save(model, folder: Path, tokenizer: bool, weights: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if weights:
        model.save_pretrained(str(folder))
    else:
        model.config.save_pretrained(str(folder))
    if tokenizer:
        save_tokenizer(folder)
    return folder


def llama_config(**overrides):
    from transformers import LlamaConfig

    kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
              tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    kw.update(overrides)
    return LlamaConfig(**kw)


def llama_folder(folder: Path, *, seed: int = 0, tokenizer: bool = True, weights: bool = True, **overrides) -> Path:
    """A 2-layer Llama (grouped-query attention: 4 query heads, 2 key/value heads)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(llama_config(**overrides))
    return _save(model, folder, tokenizer, weights)


def gpt2_folder(folder: Path, *, seed: int = 0, tokenizer: bool = True, **overrides) -> Path:
    """A 2-layer GPT-2 with non-zero biases (GPT-2's init zeroes them: randomized here, so that the
    mapping of every bias is exercised)."""
    from transformers import AutoModelForCausalLM, GPT2Config

    kw = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
              attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    kw.update(overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(GPT2Config(**kw))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    return _save(model, folder, tokenizer, True)


def neox_folder(folder: Path, *, seed: int = 0, tokenizer: bool = True, **overrides) -> Path:
    """A 2-layer GPT-NeoX laid out as our rotary GPT (sequential residual, full rotary, base 10000)."""
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    kw = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
              max_position_embeddings=128, hidden_act="gelu_new", use_parallel_residual=False,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0},
              attention_dropout=0.0, hidden_dropout=0.0, bos_token_id=0, eos_token_id=0)
    kw.update(overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(GPTNeoXConfig(**kw))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    return _save(model, folder, tokenizer, True)


def hf_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    """`transformers`' own forward of a saved folder (fp32, eval mode)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits
