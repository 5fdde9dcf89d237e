"""Turning a mapping (a config section, a model_config.json) into a family's args dataclass."""

from __future__ import annotations

import dataclasses

from scaletrain.errors import UserError


def args_from_dict(args_cls: type, d: dict, prefix: str):
    """Build an args dataclass, turning unknown/missing keys into UserError (not TypeError)."""
    if not isinstance(d, dict):
        raise UserError(f"{prefix} args must be a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(args_cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise UserError(f"unknown {prefix} key(s) {unknown}; known: {sorted(fields)}")
    missing = [n for n, f in fields.items()
               if n not in d and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"missing {prefix} key(s) {missing}")
    return args_cls(**d)
