"""The MLP family: `model.py` (the classifier), `spec.py` (its arithmetic for `scaletrain plan`),
`config.py` (its `model:` section) and `family.py` (`FAMILY`). It has no parallel plan: only the
data-parallel layouts (ddp, zero1, fsdp of the whole model) apply.

Nothing is imported here: `config.py` must load without torch (see scaletrain.models.family).
"""
