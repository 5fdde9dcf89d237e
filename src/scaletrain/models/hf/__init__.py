"""The `hf` family: any causal language model `transformers` defines, from a Hugging Face model
folder (`model.name=hf model.path=DIR`):

- config.py: the `model:` section (`HFConfig`), torch-free;
- model.py: `HFCausalLM`, the `transformers` model behind the family's interface (logits out,
  `generate`, `args_dict`: the folder's config.json is recorded, so a run rebuilds without it);
- parallelize.py: its blocks, found from `_no_split_modules` (FSDP units, activation
  checkpointing); no tensor-parallel plan and no pipeline stages;
- spec.py: its arithmetic for `scaletrain plan` (an estimate);
- family.py: `FAMILY`.

Nothing is imported here: `config.py` must load without torch (configs are validated first).
"""
