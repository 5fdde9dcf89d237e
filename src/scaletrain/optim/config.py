"""The `optim:` section: the shared hyperparameters, and one options section per optimizer that
declares one (`optim.lion.betas`, `optim.muon.ns_steps`...), composed from the registry. No torch here."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, create_model, field_validator, model_validator

from scaletrain.optim.registry import OPTIMIZERS, Beta, available
from scaletrain.sections import PositiveInt, Section


class SharedOptimConfig(Section):
    """The optimizer. Shared hyperparameters here; each optimizer's own ones in a section named
    after it, read only by that optimizer. docs/optimizers.md lists which top-level keys each
    optimizer uses."""

    name: str = "adamw"
    lr: Annotated[float, Field(gt=0.0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.1
    betas: Annotated[list[Beta], Field(min_length=2, max_length=2)] = [0.9, 0.95]  # adam family
    eps: Annotated[float, Field(gt=0.0)] = 1e-8
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9  # momentum, nesterov, lars
    fused: bool | None = None  # None: fused kernels where torch has them for the parameters' device
    lr_multipliers: dict[str, Annotated[float, Field(gt=0.0)]] = {}  # glob on parameter names -> factor
    # The lr above was tuned at `reference_batch` (global batch, samples or sequences per step); a run
    # with another global batch scales it: linear (Goyal et al. 2017, SGD) or sqrt (Adam family).
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    reference_batch: PositiveInt | None = None

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in OPTIMIZERS:  # the registry is torch-free: errors come at once
            raise ValueError(f"unknown optimizer {name!r} (known: {', '.join(available())})")
        return name

    @model_validator(mode="after")
    def _scaling_needs_reference(self) -> "SharedOptimConfig":
        if self.lr_scaling != "none" and self.reference_batch is None:
            raise ValueError(
                f"optim.reference_batch: required with optim.lr_scaling={self.lr_scaling} (the global "
                "batch at which optim.lr was tuned)"
            )
        return self


# `optim.<name>` for every optimizer that declares options (scaletrain.optim.registry).
OptimConfig = create_model(
    "OptimConfig", __base__=SharedOptimConfig, __module__=__name__,
    **{name: (spec.options, spec.options()) for name, spec in OPTIMIZERS.items() if spec.options is not None},
)
