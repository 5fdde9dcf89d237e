"""The Llama family as the core sees it (see scaletrain.models.family)."""

from __future__ import annotations

from scaletrain.models.family import DataShape, ModelFamily
from scaletrain.models.llama.config import LlamaConfig
from scaletrain.models.llama.hf import HF
from scaletrain.models.llama.model import Llama
from scaletrain.models.llama.parallelize import PLAN
from scaletrain.models.llama.spec import llama_spec
from scaletrain.models.start import START_KEYS


def args_from_config(section: LlamaConfig, data: DataShape) -> dict:
    """The module's args (what model_config.json records): the section plus the data's shape, or
    the architecture of the Hugging Face folder `model.init_from` names."""
    if section.init_from:
        from scaletrain.models.pretrained import args_from_folder

        return args_from_folder(section, data, HF, "llama")
    return {**section.model_dump(exclude=START_KEYS), "vocab_size": data.vocab_size, "seq_len": data.seq_len}


FAMILY = ModelFamily(name="llama", config=LlamaConfig, module=Llama,
                     args_from_config=args_from_config, spec=llama_spec, plan=PLAN, hf=HF)
