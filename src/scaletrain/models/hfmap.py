"""Tensor by tensor between a native family and a Hugging Face architecture.

A family's `hf.py` lists one `TensorMap` per tensor: our name, HF's name, and how the values move
between the two layouts (a row permutation, a transposition for GPT-2's Conv1D, or a tensor HF has
and we do not: a bias we keep at zero). The same list serves both ways, so an import followed by an
export gives back the file's values exactly, and export after import is tested against
`transformers`' own forward pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from scaletrain.errors import UserError


@dataclass(frozen=True)
class TensorMap:
    ours: str | None  # our state-dict name; None: a tensor only HF has, zero in our model
    hf: str  # HF's state-dict name
    rows: torch.Tensor | None = None  # HF's row i is our row rows[i] (None: the same order)
    transpose: bool = False  # HF stores the matrix transposed (GPT-2's Conv1D: [in, out])
    shape: tuple[int, ...] | None = None  # `ours is None`: the shape HF expects
    alt: tuple[str, ...] = ()  # older names of the same tensor, read when `hf` is absent

    def to_hf(self, ours: torch.Tensor | None) -> torch.Tensor:
        if self.ours is None:
            return torch.zeros(self.shape)
        t = ours if self.rows is None else ours[self.rows]
        return (t.t() if self.transpose else t).contiguous()

    def from_hf(self, hf: torch.Tensor) -> torch.Tensor:
        t = hf.t() if self.transpose else hf
        if self.rows is not None:
            t = t[torch.argsort(self.rows)]
        return t.contiguous()

    def ours_shape(self, hf_shape: list[int]) -> list[int]:
        return list(reversed(hf_shape)) if self.transpose else list(hf_shape)


def per_head_rows(heads: int, head_dim: int) -> torch.Tensor:
    """Meta's rotary layout (pairs 2j, 2j+1 of each head) to HF's "rotate half" (pairs j, j + hd/2):
    HF's row (h, p, j) is our row (h, j, p). The `permute` of transformers'
    convert_llama_weights_to_hf.py, as an index."""
    return torch.arange(heads * head_dim).view(heads, head_dim // 2, 2).transpose(1, 2).reshape(-1)


def fused_qkv_rows(heads: int, head_dim: int) -> torch.Tensor:
    """Our fused qkv rows, head by head ([h0: q k v][h1: q k v]...), to GPT-2's c_attn columns
    ([q of all heads][k ...][v ...]): HF's (s, h, i) is our (h, s, i)."""
    return torch.arange(3 * heads * head_dim).view(heads, 3, head_dim).transpose(0, 1).reshape(-1)


def to_hf_state(entries: list[TensorMap], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our (plain, dense) state dict -> HF's, one entry each."""
    out = {}
    for e in entries:
        if e.ours is not None and e.ours not in state:
            raise KeyError(f"the model has no tensor {e.ours!r} (a mapping for another structure?)")
        out[e.hf] = e.to_hf(None if e.ours is None else state[e.ours].detach().float().cpu())
    return out


def from_hf_state(entries: list[TensorMap], read: Callable[[str], torch.Tensor], names: set[str],
                  where: str, ignored: tuple[str, ...] = (), prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(our name, tensor) for every entry, read from a checkpoint holding `names`.

    Every HF tensor must be used (or match `ignored`: buffers older files hold), every entry found,
    with the shape our model expects; a tensor our model lacks must be zero. `prefix`: the base
    model's name (`transformer.`), which files saved from the base model leave out. UserError names
    the first tensor that does not fit."""
    def find_one(name: str) -> str | None:
        if name in names:
            return name
        if prefix and name.startswith(prefix) and name[len(prefix):] in names:
            return name[len(prefix):]
        return None

    def find(e: TensorMap) -> str | None:
        return next(filter(None, (find_one(n) for n in (e.hf, *e.alt))), None)

    missing = [e.hf for e in entries if find(e) is None]
    if missing:
        raise UserError(f"{where}: no tensor {missing[0]!r} ({len(missing)} missing): not the architecture "
                        "its config.json names, or a partial checkpoint")
    skip = [re.compile(p) for p in ignored]
    extra = sorted(n for n in names - {find(e) for e in entries} if not any(p.search(n) for p in skip))
    if extra:
        raise UserError(f"{where}: tensor {extra[0]!r} ({len(extra)} unexpected) has no place in the model "
                        "its config.json describes")
    for e in entries:
        name = find(e)
        tensor = read(name)
        if e.ours is None:
            if tuple(tensor.shape) != tuple(e.shape):
                raise UserError(f"{where}: {name} has shape {list(tensor.shape)}, expected {list(e.shape)}")
            if bool(tensor.ne(0).any()):
                raise UserError(f"{where}: {name} is not zero, and the model has no such tensor (set "
                                "model.bias=true for a model with biases)")
            continue
        yield e.ours, e.from_hf(tensor.float())


def check_shapes(entries: list[TensorMap], shapes: dict[str, list[int]], expected: dict[str, torch.Size],
                 where: str, prefix: str = "") -> None:
    """Every mapped tensor's shape in the file (HF's `shapes`) against the model's (`expected`,
    ours): UserError naming both names and shapes at the first difference, before anything loads."""
    for e in entries:
        if e.ours is None:
            continue
        candidates = [n for h in (e.hf, *e.alt) for n in (h, h[len(prefix):] if prefix and h.startswith(prefix) else h)]
        name = next((n for n in candidates if n in shapes), None)
        if name is None or e.ours not in expected:
            continue
        if e.ours_shape(shapes[name]) != list(expected[e.ours]):
            raise UserError(f"{where}: {name} has shape {shapes[name]}, but {e.ours} of the model its "
                            f"config.json describes is {list(expected[e.ours])}")


_MISSING = object()


def hf_value(config: dict, key: str, kind: type | tuple = int, default=_MISSING, *, positive: bool = True):
    """`config[key]` of a config.json (from outside: every value checked), or `default`; a
    UserError naming the key when it is missing or of another kind."""
    value = config.get(key, default)
    if value is _MISSING:
        raise UserError(f"config.json: {key!r} missing")
    if value is None and default is None:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if ok and isinstance(value, (int, float)) and not isinstance(value, bool):
        ok = value == value and abs(value) != float("inf") and (not positive or value > 0)
    if not ok:
        names = "/".join(k.__name__ for k in kinds)
        raise UserError(f"config.json: {key!r} must be {'a positive ' if positive else ''}{names}, got {value!r:.60}")
    return value


def refuse(config: dict, key: str, allowed, why: str) -> None:
    """UserError when config.json sets `key` to a value other than `allowed` (one value or a tuple)."""
    value = config.get(key)
    options = allowed if isinstance(allowed, tuple) else (allowed,)
    if key in config and value not in options:
        raise UserError(f"config.json: {key} = {value!r:.60} is not supported: {why}")


def hf_context(config: dict, seq_len: int | None) -> int | None:
    """The model's context (config.json max_position_embeddings), refusing a data.seq_len beyond it."""
    context = hf_value(config, "max_position_embeddings", int, None)
    if context is not None and seq_len is not None and seq_len > context:
        raise UserError(f"data.seq_len: {seq_len} is longer than the model's context "
                        f"(config.json max_position_embeddings {context})")
    return context
