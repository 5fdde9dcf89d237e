"""The GPT family: `model.py` (the module), `parallelize.py` (its parallel plan), `spec.py` (its
arithmetic for `scaletrain plan`), `config.py` (its `model:` section) and `family.py` (`FAMILY`).

Nothing is imported here: `config.py` must load without torch (see scaletrain.models.family).
"""
