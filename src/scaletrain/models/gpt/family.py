"""The GPT family as the core sees it (see scaletrain.models.family)."""

from __future__ import annotations

from scaletrain.models.family import DataShape, ModelFamily
from scaletrain.models.gpt.config import GPTConfig
from scaletrain.models.gpt.hf import HF
from scaletrain.models.gpt.model import GPT
from scaletrain.models.gpt.parallelize import PLAN
from scaletrain.models.gpt.spec import spec
from scaletrain.models.start import START_KEYS


def args_from_config(section: GPTConfig, data: DataShape) -> dict:
    if section.init_from:  # the Hugging Face folder's config.json decides the architecture
        from scaletrain.models.pretrained import args_from_folder

        return args_from_folder(section, data, HF, "gpt")
    return {**section.model_dump(exclude=START_KEYS), "vocab_size": data.vocab_size, "seq_len": data.seq_len}


FAMILY = ModelFamily(name="gpt", config=GPTConfig, module=GPT, args_from_config=args_from_config,
                     spec=spec, plan=PLAN, hf=HF)
