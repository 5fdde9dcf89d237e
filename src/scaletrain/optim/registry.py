"""The optimizers, declared in one place: name -> what the rest of scaletrain needs to know of it.

Each line of `_BUILTIN` declares one optimizer: its factory (`factory(groups, **hyperparameters)
-> torch.optim.Optimizer`, named "module:function" and imported when an optimizer is built), its
own options section (`optim.<name>.*`), its state bytes per parameter (what `scaletrain plan`
counts), whether it runs on sharded DTensor parameters (FSDP, TP) and whether it updates in one
fused kernel. The config (`optim:` section, scaletrain.optim.config) and `plan` read this table.

Adding an optimizer: its module (the update rule and its factory), its options section here when it
has hyperparameters of its own, and one line in `_BUILTIN`. No torch is imported here: the config
validates `optim.*` before torch is loaded.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from scaletrain.errors import UserError
from scaletrain.sections import NonNegInt, Section

# ---- the optimizers' own options (`optim.<name>.*`) ---------------------------------------------

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class AdagradOptions(Section):
    lr_decay: Annotated[float, Field(ge=0.0)] = 0.0  # lr / (1 + (t-1) * lr_decay)
    initial_accumulator_value: Annotated[float, Field(ge=0.0)] = 0.0


class RMSpropOptions(Section):
    alpha: Beta = 0.99  # decay of the running mean of squared gradients
    centered: bool = False  # divide by the variance estimate (subtract the mean gradient squared)
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0


class LambOptions(Section):
    bias_correction: bool = True  # Adam's bias correction of m and v (the paper's Algorithm 2 has it)
    max_trust_ratio: Annotated[float, Field(gt=0.0)] | None = None  # clip phi(||w||)/||r||; None: no clip


class LarsOptions(Section):
    trust_coefficient: Annotated[float, Field(gt=0.0)] = 0.001  # eta in the paper
    eps: Annotated[float, Field(ge=0.0)] = 0.0  # added to the denominator of the trust ratio
    # Groups without weight decay (biases, norms, embeddings) are not adapted by default (You et
    # al. 2017 and the MLPerf reference skip them): they take plain momentum steps.
    adapt_no_decay: bool = False


class LionOptions(Section):
    # The paper's defaults (Chen et al. 2023): beta1 interpolates the update, beta2 tracks momentum.
    betas: Annotated[list[Beta], Field(min_length=2, max_length=2)] = [0.9, 0.99]


class MuonOptions(Section):
    momentum: Beta = 0.95
    nesterov: bool = True
    ns_steps: Annotated[int, Field(gt=0, le=100)] = 5  # Newton-Schulz iterations (beyond ~10 gain nothing)
    # "match_rms_adamw" (Moonlight) scales each update to AdamW's RMS so that one lr serves both the
    # Muon matrices and the AdamW parameters; "original" is Keller Jordan's sqrt(max(1, rows/cols)).
    adjust_lr_fn: Literal["original", "match_rms_adamw"] = "match_rms_adamw"
    adamw_lr_ratio: Annotated[float, Field(gt=0.0)] = 1.0  # lr of the AdamW part = lr * this


class AdafactorOptions(Section):
    beta2_decay: Annotated[float, Field(le=0.0)] = -0.8  # beta2_t = 1 - t^beta2_decay
    eps1: Annotated[float, Field(gt=0.0)] | None = None  # None: torch's finfo(dtype).eps
    eps2: Annotated[float, Field(gt=0.0)] = 1e-3  # relative step floor: lr * max(eps2, RMS(w))
    d: Annotated[float, Field(gt=0.0)] = 1.0  # update clipping threshold


class AdamW8bitOptions(Section):
    # Tensors with fewer elements keep 32-bit states (bitsandbytes' default): quantising a bias
    # saves nothing and costs a block's absmax.
    min_8bit_size: NonNegInt = 4096


# ---- the declarations ----------------------------------------------------------------------------

@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    factory: str | Callable  # "module:function", imported on first use, or the factory itself
    # Optimizer state per fp32 parameter, bytes (docs/optimizers.md measures each from the state
    # tensors); None: unknown (plan then assumes AdamW's 8).
    state_bytes: float | None = None
    options: type[Section] | None = None  # its `optim.<name>` section, or None
    sharded: str | None = None  # why it cannot run on DTensor (FSDP/TP) parameters; None: it can
    fused: bool = False  # one in-place kernel per step: no parameter-sized temporaries (plan)
    needs: tuple[str, str] | None = None  # (package, extra) of an optional dependency it imports

    def build(self):
        if callable(self.factory):
            return self.factory
        module, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module), attr)


_BUILTIN = [
    OptimizerSpec("gd", "scaletrain.optim.classic:gd", state_bytes=0.0),
    OptimizerSpec("sgd", "scaletrain.optim.classic:sgd", state_bytes=0.0),
    OptimizerSpec("momentum", "scaletrain.optim.classic:momentum", state_bytes=4.0),
    OptimizerSpec("nesterov", "scaletrain.optim.classic:nesterov", state_bytes=4.0),
    OptimizerSpec("adam", "scaletrain.optim.classic:adam", state_bytes=8.0, fused=True),
    OptimizerSpec("adamw", "scaletrain.optim.classic:adamw", state_bytes=8.0, fused=True),
    OptimizerSpec("adagrad", "scaletrain.optim.classic:adagrad", state_bytes=4.0, options=AdagradOptions),
    OptimizerSpec("rmsprop", "scaletrain.optim.classic:rmsprop", state_bytes=4.0, options=RMSpropOptions),
    OptimizerSpec("lamb", "scaletrain.optim.lamb:build", state_bytes=8.0, options=LambOptions),
    OptimizerSpec("lars", "scaletrain.optim.lars:build", state_bytes=4.0, options=LarsOptions),
    OptimizerSpec("lion", "scaletrain.optim.lion:build", state_bytes=4.0, options=LionOptions),
    OptimizerSpec("muon", "scaletrain.optim.muon:build", state_bytes=4.0, options=MuonOptions),
    OptimizerSpec("adafactor", "scaletrain.optim.classic:adafactor", state_bytes=0.05, options=AdafactorOptions,
                  sharded="its factored row/column statistics need the whole matrix"),
    OptimizerSpec("adamw8bit", "scaletrain.optim.adamw8bit:build", state_bytes=2.03, options=AdamW8bitOptions,
                  sharded="bitsandbytes kernels take plain tensors only", needs=("bitsandbytes", "bnb")),
]
OPTIMIZERS: dict[str, OptimizerSpec] = {spec.name: spec for spec in _BUILTIN}


def register(name: str, *, state_bytes: float | None = None, sharded: str | None = None, fused: bool = False):
    """Decorator for a user's optimizer: `@register("mine") def factory(groups, *, lr, weight_decay,
    betas, eps, momentum, nesterov, fused, options, names, roles): ...`. Factories receive every
    hyperparameter and use what they need; `options` is the optimizer's `optim.<name>` section
    (None for a user's optimizer); `names` / `roles` the parameter names / roles of each group,
    from param_groups (None for plain groups)."""
    def deco(fn):
        if name in OPTIMIZERS:
            raise ValueError(f"optimizer {name!r} registered twice")
        OPTIMIZERS[name] = OptimizerSpec(name, fn, state_bytes=state_bytes, sharded=sharded, fused=fused)
        return fn
    return deco


def available() -> list[str]:
    return sorted(OPTIMIZERS)


def options_of(name: str, options: Any):
    """The `optim.<name>` section: the one given, else its defaults."""
    if options is not None:
        return options
    cls = OPTIMIZERS[name].options
    return cls() if cls is not None else None


def build_optimizer(
    name: str,
    groups: list[dict],
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    momentum: float = 0.9,
    nesterov: bool = False,
    fused: bool | None = None,
    options: Any = None,
):
    """Build optimizer `name` over `groups` (from param_groups, or plain dicts with "params").

    Each group gets lr = lr * lr_mult and base_lr = the same value (schedules.apply_lr
    scales base_lr); groups without weight_decay get `weight_decay`. `options` is the optimizer's
    own config section (e.g. `cfg.optim.lion`); None takes its defaults."""
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optim.name {name!r}; known: {available()}")
    if lr <= 0:
        raise UserError(f"optim.lr must be > 0, got {lr!r}")
    prepared, names, roles = [], [], []
    for g in groups:
        g = dict(g)
        # Parameter names (from param_groups) are for factories that place parameters by role
        # (muon); they stay out of the optimizer's groups so checkpoints keep their layout.
        names.append(g.pop("param_names", None))
        roles.append(g.pop("param_roles", None))
        g["params"] = list(g["params"])
        g.setdefault("lr_mult", 1.0)
        g.setdefault("weight_decay", weight_decay)
        g["lr"] = g["base_lr"] = lr * g["lr_mult"]
        prepared.append(g)
    return OPTIMIZERS[name].build()(
        prepared, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps,
        momentum=momentum, nesterov=nesterov, fused=fused, options=options_of(name, options),
        names=None if any(n is None for n in names) else names,
        roles=None if any(r is None for r in roles) else roles,
    )


def build_from_config(model, optim_cfg, global_batch: int | None = None):
    """The optimizer a config asks for, over `model`'s parameter groups.
    With `global_batch`, optim.lr is rescaled by optim.lr_scaling (schedules.effective_lr)."""
    from scaletrain.optim.param_groups import param_groups  # torch: only when an optimizer is built
    from scaletrain.optim.schedules import effective_lr

    o = optim_cfg
    lr = effective_lr(o, global_batch) if global_batch is not None else o.lr
    groups = param_groups(model, o.weight_decay, o.lr_multipliers)
    return build_optimizer(o.name, groups, lr=lr, weight_decay=o.weight_decay, betas=tuple(o.betas),
                           eps=o.eps, momentum=o.momentum, fused=o.fused,
                           options=getattr(o, o.name, None))
