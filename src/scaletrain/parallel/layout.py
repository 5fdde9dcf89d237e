"""A configured layout, ready to train: the dims and their mesh, the wrapped module, and what the
train step asks of the layout (which slice of the global batch this rank reads, how to skip a
gradient sync, the true global gradient norm, the precision forward passes run at, the whole
model for evaluation and export)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from scaletrain.models.family import ModelFamily
from scaletrain.parallel.config import ParallelConfig
from scaletrain.parallel.dims import ParallelDims
from scaletrain.parallel.dist import DistInfo, collective_device
from scaletrain.parallel.parallelize import parallelize


def autocast_context(device: torch.device, precision: str) -> AbstractContextManager:
    if precision == "fp32":
        return nullcontext()
    if precision not in ("bf16", "fp16"):  # "auto" is decided before (hardware.choose_precision)
        raise ValueError(f"precision {precision!r}: expected fp32, bf16 or fp16")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class Pipeline:
    """This rank's pipeline stage and what the layout needs of it (see pipeline.py)."""

    group: dist.ProcessGroup  # this rank's pipeline: one rank per stage
    last_rank: int  # the global rank of the last stage of this rank's pipeline (it has the loss)
    first: bool
    tied: nn.Parameter | None  # the embedding/head matrix both end stages hold, or None
    # micro-batches -> loss: the schedule's step (gradients accumulated, tied gradients summed)
    forward_backward: Callable
    consolidate: Callable[[], nn.Module]  # every stage's current weights -> a whole plain model
    # The whole model as it was built (its modules and tied parameters; under FSDP a meta-device
    # copy taken before sharding): what the optimizer's parameter groups are decided on.
    whole: nn.Module


@dataclass
class Layout:
    """What the trainer needs from a parallel layout."""

    dims: ParallelDims
    model: nn.Module  # the plain model (FSDP/TP turn its weights into DTensors in place)
    module: nn.Module  # what forward/backward run through: a DDP wrapper, `model`, or this rank's stage
    trained: nn.Module  # what this rank trains and checkpoints, under the model's names: `model` or its stage
    info: DistInfo
    precision: str = "fp32"  # train.precision
    mesh: DeviceMesh | None = None
    dp_rank: int = 0
    dp_world: int = 1
    pipeline: Pipeline | None = None

    @property
    def distributed(self) -> bool:
        return self.info.world > 1

    @property
    def forward_backward(self) -> Callable | None:
        """The layout's own forward/backward over a step's micro-batches (pipelining's schedule),
        or None: the train step's plain loop."""
        return self.pipeline.forward_backward if self.pipeline is not None else None

    @functools.cached_property
    def autocast(self) -> AbstractContextManager:
        """The autocast of a forward pass through `module` or the whole model (`dims.autocast_precision`:
        none where FSDP casts). Under pipelining the stages cast themselves (pipeline.py) and the
        whole model, evaluated after consolidation, is plain: it runs at train.precision."""
        precision = self.precision if self.dims.pp_enabled else self.dims.autocast_precision(self.precision)
        return autocast_context(self.info.device, precision)

    @property
    def syncs_gradients(self) -> bool:
        """Whether `grad_sync` does anything (DDP, FSDP): else the step needs no context for it."""
        return self.dims.ddp or self.dims.fsdp

    def grad_sync(self, enabled: bool):
        """Context for one micro-batch's backward: skip the gradient all-reduce/reduce-scatter
        unless `enabled` (the last micro-batch of an accumulated step)."""
        if self.dims.ddp and not enabled:
            return self.module.no_sync()
        if self.dims.fsdp:
            self.model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()

    def grad_norm(self, params: list[nn.Parameter]) -> torch.Tensor:
        """The global L2 norm of the gradients of `params` (this rank's trained parameters)."""
        if self.pipeline is None:
            return global_grad_norm(params)
        p = self.pipeline
        if p.tied is not None and not p.first:  # count the tied matrix once, on the first stage
            params = [q for q in params if q is not p.tied]
        return global_grad_norm(params, p.group)

    def clip(self, params: list[nn.Parameter], max_norm: float, total_norm: torch.Tensor) -> None:
        clip_grads(params, max_norm, total_norm)

    def global_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of a per-rank scalar over the data-parallel ranks (for logging); with pipelining,
        the last stages' mean (only they compute the loss), on every rank."""
        if not self.distributed:
            return value
        value = value.detach().clone().float()
        if self.dims.dp_enabled:
            dist.all_reduce(value, group=self.mesh["dp"].get_group())
            value /= self.dp_world
        if self.pipeline is not None:
            dist.broadcast(value, src=self.pipeline.last_rank, group=self.pipeline.group)
        return value

    @property
    def full_model_sharded(self) -> bool:
        """`full_model()` holds DTensor shards (FSDP, TP): its full state dict is a collective."""
        return self.dims.sharded_params and not self.dims.pp_enabled

    def full_model(self) -> nn.Module:
        """The whole model, usable for a forward on every rank (a collective under FSDP/TP, whose
        forward gathers). Pipelining first copies every stage's current weights to every rank."""
        if self.pipeline is not None:
            return self.pipeline.consolidate()
        return self.model

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights as plain CPU tensors on every rank (a collective when sharded)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        model = self.full_model()
        if self.full_model_sharded:
            full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
            return {k: v.detach().cpu() for k, v in full.items()}
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def build_layout(model: nn.Module, family: ModelFamily | None, cfg: ParallelConfig, info: DistInfo, *,
                 precision: str, compile: bool, loss_fn=None, dims: ParallelDims | None = None) -> Layout:
    """Apply the configured layout to `model` (built by `family`; None: a user's module, which has
    no parallel plan). `loss_fn(logits, y)` is needed by pipelining, whose schedule computes the loss."""
    dims = dims or ParallelDims.from_config(cfg, info.world)
    plan = family.plan if family is not None else None
    mesh = dims.build_mesh(info.device.type)
    model.to(info.device)
    if dims.pp_enabled:
        from scaletrain.parallel.pipeline import build_pipeline

        return build_pipeline(model, plan, dims, mesh, cfg, info, precision=precision, compile=compile,
                              loss_fn=loss_fn)
    module = parallelize(model, plan, dims, mesh, cfg, precision=precision, compile=compile)
    layout = Layout(dims, model, module, model, info, precision, mesh)
    if dims.dp_enabled:
        layout.dp_rank, layout.dp_world = mesh["dp"].get_local_rank(), dims.dp_size
    return layout


def wrap_optimizer(layout: Layout, groups: list[dict], factory) -> torch.optim.Optimizer:
    """The optimizer for the layout: `factory(groups)`, or ZeRO-1's sharded wrapper around it."""
    if not layout.dims.zero1:
        return factory(groups)
    from torch.distributed.optim import ZeroRedundancyOptimizer

    # ZeRO-1: every rank keeps optimizer state only for the parameters it owns, steps them, and
    # broadcasts the updated values; gradients are still all-reduced in full by DDP.
    return ZeroRedundancyOptimizer(groups, optimizer_class=functools.partial(_from_groups, factory),
                                   process_group=layout.mesh["dp"].get_group())


def _from_groups(factory, params, **_defaults):
    return factory(list(params))


@torch.no_grad()
def global_grad_norm(params: list[nn.Parameter], pp_group=None) -> torch.Tensor:
    """The L2 norm of all gradients of the model, whatever holds them.

    Plain tensors (single, DDP, ZeRO-1: already all-reduced, or TP's replicated embeddings) count
    as they are; DTensor gradients (FSDP shards, TP shards) are reduced over their mesh by
    `full_tensor()` of their norm, grouped by mesh so each group costs one collective; pipeline
    stages hold disjoint parameters, so their squared norms are summed over `pp_group`.
    """
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    if not grads and pp_group is None:
        return torch.zeros(())
    plain = [g for g in grads if not isinstance(g, DTensor)]
    if len(plain) == len(grads) and pp_group is None:  # single, ddp, zero1: one norm, no extra ops
        return nn.utils.get_total_norm(plain)
    by_layout: dict = {}
    for g in grads:
        if isinstance(g, DTensor):
            by_layout.setdefault((g.device_mesh, g.placements), []).append(g)
    # The sum is a collective's tensor under pipelining: it lives on the layout's device (a stage
    # whose parameters took no gradient still joins the pipeline's sum).
    device = collective_device()
    total_sq = torch.zeros((), device=device, dtype=torch.float32)
    if plain:
        total_sq += nn.utils.get_total_norm(plain).float() ** 2
    for group in by_layout.values():
        norm = nn.utils.get_total_norm(group)
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        total_sq += norm.float().to(device) ** 2
    if pp_group is not None:
        dist.all_reduce(total_sq, group=pp_group)
    return total_sq.sqrt()


@torch.no_grad()
def clip_grads(params: list[nn.Parameter], max_norm: float, total_norm: torch.Tensor) -> None:
    """Scale gradients by max_norm / total_norm (when above). Plain and DTensor gradients are
    scaled in separate foreach calls, one per mesh: one call may not mix them (TP keeps embeddings
    plain; FSDP+TP puts TP weights on the 2-D mesh and the rest on the dp mesh)."""
    from torch.distributed.tensor import DTensor

    groups: dict = {}  # one foreach call per kind of gradient: plain, or DTensor of one mesh
    for p in params:
        if p.grad is not None:
            key = p.grad.device_mesh if isinstance(p.grad, DTensor) else None
            groups.setdefault(key, []).append(p)
    for group in groups.values():
        nn.utils.clip_grads_with_norm_(group, max_norm, total_norm)
