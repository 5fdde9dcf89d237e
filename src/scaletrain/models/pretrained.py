"""`model.init_from=DIR`: a native family's module args from a Hugging Face folder's config.json.

The folder decides the architecture (its config.json, read through scaletrain.untrusted); the
weights are read later, once the model is built (scaletrain.train.pretrained). A key the config
sets to another value than the folder's is replaced by the folder's, with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

from scaletrain.errors import UserError
from scaletrain.models.family import DataShape, HFMapping
from scaletrain.models.start import START_KEYS
from scaletrain.untrusted.hf import architecture, read_config

log = logging.getLogger(__name__)


def hf_config(folder: str | Path, mapping: HFMapping, family: str) -> dict:
    """config.json of `folder`, which must name an architecture `mapping` reads."""
    folder = Path(folder).expanduser()
    config = read_config(folder)
    arch = architecture(config)
    if arch not in mapping.architectures:
        from scaletrain.models import FAMILIES, get_family  # the registry imports the sections only

        readers = [name for name in FAMILIES if name not in (family, "hf")
                   and getattr(get_family(name).hf, "architectures", ()) and arch in get_family(name).hf.architectures]
        hint = (f"use model.name={readers[0]}" if readers
                else "train it as it is with model.name=hf model.path=DIR")
        raise UserError(f"model.init_from: {folder / 'config.json'} describes a {arch}; model.name={family} reads "
                        f"{', '.join(mapping.architectures)} ({hint})")
    return config


def args_from_folder(section, data: DataShape, mapping: HFMapping, family: str) -> dict:
    """The module args of `section.init_from`'s model (its config.json), for the data `data`."""
    folder = Path(section.init_from).expanduser()
    config = hf_config(folder, mapping, family)
    try:
        args = mapping.args_from_hf(config, data)
    except UserError as exc:
        message = str(exc)
        raise UserError(f"model.init_from: {folder / message}" if message.startswith("config.json")
                        else f"model.init_from={folder}: {message}") from None
    for key in sorted(section.model_fields_set - START_KEYS):
        if key in args and args[key] != getattr(section, key):
            log.warning("warning: model.%s=%s is replaced by %s from %s (model.init_from decides the architecture)",
                        key, getattr(section, key), args[key], folder / "config.json")
    return args
