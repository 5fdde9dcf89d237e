"""The `hf` family as the core sees it (see scaletrain.models.family)."""

from __future__ import annotations

from pathlib import Path

from scaletrain.errors import UserError
from scaletrain.models.family import DataShape, ModelFamily
from scaletrain.models.hf.config import HFConfig
from scaletrain.models.hf.model import HFCausalLM, hf_config
from scaletrain.models.hf.parallelize import PLAN
from scaletrain.models.hf.spec import spec
from scaletrain.untrusted.hf import read_config


def args_from_config(section: HFConfig, data: DataShape) -> dict:
    """The folder's config.json (recorded whole: the run rebuilds its model without the folder) and
    the training context. The vocabulary is the model's; the data's tokenizer must fit in it."""
    folder = Path(section.path).expanduser()
    config = read_config(folder)
    hf_config(config)  # an architecture transformers defines (never code from the folder), checked now
    context = config.get("max_position_embeddings", config.get("n_positions"))
    if isinstance(context, int) and data.seq_len is not None and data.seq_len > context:
        raise UserError(f"data.seq_len: {data.seq_len} is longer than the model's context ({folder / 'config.json'}: "
                        f"{context} positions)")
    return {"config": config, "seq_len": data.seq_len, "dtype": section.dtype}


FAMILY = ModelFamily(name="hf", config=HFConfig, module=HFCausalLM, args_from_config=args_from_config,
                     spec=spec, plan=PLAN)
