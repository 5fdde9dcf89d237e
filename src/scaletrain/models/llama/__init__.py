"""The Llama family (Llama 3 / 3.1 / 3.2 architecture; QK-norm as in Qwen3 and OLMo 2).

- model.py: the plain nn.Module (`Llama`, `LlamaArgs`);
- rope.py: rotary positions with Llama 3.1's frequency scaling;
- config.py: the `model:` section (`LlamaConfig`) and `args_from_config`;
- parallel.py: the tensor-parallel plan, blocks and pipeline stages (`PLAN`);
- spec.py: parameters, FLOPs and activation memory for `scaletrain plan` (`llama_spec`).
"""

from scaletrain.models.family import ModelFamily
from scaletrain.models.llama.config import LlamaConfig, RopeScalingConfig, args_from_config
from scaletrain.models.llama.model import Llama, LlamaArgs
from scaletrain.models.llama.parallel import PLAN
from scaletrain.models.llama.spec import LlamaSpec, llama_spec

FAMILY = ModelFamily(name="llama", config=LlamaConfig, module=Llama, task="language_modeling",
                     args_from_config=args_from_config, spec=llama_spec, plan=PLAN)

__all__ = ["FAMILY", "Llama", "LlamaArgs", "LlamaConfig", "LlamaSpec", "RopeScalingConfig", "llama_spec"]
