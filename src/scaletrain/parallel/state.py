"""Model and optimizer state in one format for every layout, so checkpoints reshard.

The format is `torch.distributed.checkpoint.state_dict.get_state_dict`'s: parameters and optimizer
state keyed by the plain model's parameter names (`blocks.0.attn.qkv.weight`), whatever wraps the
model (DDP's `module.`, activation checkpointing's wrapper) and however it is sharded (FSDP/TP
DTensors). DCP then saves each rank's shard and loads it back into any other layout or world size.

ZeRO-1's `ZeroRedundancyOptimizer` is the one optimizer `get_state_dict` does not know: each rank
owns whole parameters, so each rank contributes the state of the parameters it owns under their
names — the union over ranks is exactly a plain optimizer's state dict, loadable by a single
process, and a ZeRO-1 rank loads back whichever parameters it owns now.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)


def _is_zero(optimizer) -> bool:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return isinstance(optimizer, ZeroRedundancyOptimizer)


def param_names(model: nn.Module) -> dict[nn.Parameter, str]:
    """Each parameter's name in the checkpoints: the plain model's, whatever wraps it."""
    return _param_names(model)


def _param_names(model: nn.Module) -> dict[nn.Parameter, str]:
    names = {}
    for name, param in model.named_parameters(remove_duplicate=True):
        clean = name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")
        names.setdefault(param, clean.removeprefix("module."))
    return names


# Keys of scaletrain's parameter groups that build_optimizer keeps out of the optimizer's own groups.
# ZeRO-1's wrapper keeps the groups it was given whole: without these its state has a plain
# optimizer's keys, so a single process's checkpoint loads into ZeRO-1 (and the reverse).
_GROUP_ONLY_KEYS = ("params", "param_names", "param_roles")


def _zero_state(model: nn.Module, optimizer, init: bool) -> dict:
    from torch.distributed.checkpoint.state_dict import _init_optim_state

    local = optimizer.optim
    if init:
        _init_optim_state(local)  # allocate the owned state so DCP can load into it in place
    names = _param_names(model)
    state = {names[p]: dict(s) for p, s in local.state.items()}
    groups = []
    for group in optimizer.param_groups:
        entry = {k: v for k, v in group.items() if k not in _GROUP_ONLY_KEYS}
        entry["params"] = [names[p] for p in group["params"]]
        groups.append(entry)
    return {"state": state, "param_groups": groups}


def train_state(model: nn.Module, optimizer: torch.optim.Optimizer, *, for_load: bool = False) -> dict:
    """{"model": ..., "optim": ...} of this rank, keyed by parameter name."""
    if _is_zero(optimizer):
        return {"model": get_model_state_dict(model), "optim": _zero_state(model, optimizer, for_load)}
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd}


def load_train_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Put a state filled in by `dcp.load` back into the model and optimizer."""
    if _is_zero(optimizer):
        set_model_state_dict(model, state["model"])
        names = _param_names(model)
        by_name = {names[p]: p for p in names}
        for name, values in state["optim"]["state"].items():  # DCP loaded into these tensors in
            target = optimizer.optim.state[by_name[name]]      # place; copy in case it replaced them
            for key, value in values.items():
                if isinstance(target.get(key), torch.Tensor):
                    target[key].copy_(value)
        return
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def meta_skeleton(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters live on the meta device (no storage): what the export
    needs to rebuild the plain module after fsdp/tp have sharded the original in place, without a
    second full copy of the weights held through training. Tied parameters stay tied (deepcopy's
    memo maps one parameter to one meta parameter); buffers are copied as they are (they are
    small, and non-persistent ones, which no state dict restores, keep their values)."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}  # one entry per tied parameter
    return copy.deepcopy(model, memo)


def load_full_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Make the state dict's tensors `model`'s parameters (`assign`: works on a meta skeleton and
    copies nothing), then re-tie parameters that `model` shared: assignment gives each name its own
    tensor, which would untie e.g. a GPT's embedding and output head."""
    slots: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                slots.setdefault(id(p), []).append((module, name))
    model.load_state_dict(state, assign=True)
    for shared in slots.values():
        first_module, first_name = shared[0]
        for module, name in shared[1:]:
            setattr(module, name, getattr(first_module, first_name))
    return model
