"""The Llama family (Llama 3 / 3.1 / 3.2 architecture; QK-norm as in Qwen3 and OLMo 2):

- model.py: the plain nn.Module (`Llama`, `LlamaArgs`);
- rope.py: rotary positions with Llama 3.1's frequency scaling;
- config.py: the `model:` section (`LlamaConfig`), torch-free;
- parallelize.py: blocks, tensor-parallel plan, pipeline stages (`PLAN`);
- spec.py: parameters, FLOPs and activation memory for `scaletrain plan` (`llama_spec`);
- family.py: `FAMILY`, what the core sees.

Nothing is imported here: `config.py` must load without torch (configs are validated first).
"""
