"""A configured layout, ready to train: the mesh, the wrapped module, and what the train step asks
of the layout (which slice of the global batch this rank reads, how to skip a gradient sync, the
true global gradient norm)."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from scaletrain.config.schema import ParallelConfig
from scaletrain.errors import UserError
from scaletrain.parallel.dist import DistInfo
from scaletrain.parallel.parallelize import parallelize


def mesh_shape(cfg: ParallelConfig, world: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(shape, dim names) of the device mesh for `cfg.strategy` on `world` ranks."""
    s = cfg.strategy
    if s == "single":
        if world > 1:
            raise UserError(f"parallel.strategy=single but {world} ranks were started: choose ddp, zero1, "
                            "fsdp, tp, fsdp+tp or pp")
        return (1,), ("dp",)
    if world == 1:
        raise UserError(f"parallel.strategy={s} needs several processes: set parallel.nproc=N "
                        "(or start with torchrun --nproc-per-node N)")
    if s == "tp":
        tp = cfg.tp_size or world
        if tp != world:
            raise UserError(f"parallel.tp_size={tp}: strategy tp uses all {world} ranks for tensor "
                            "parallel; combine with data parallel through strategy fsdp+tp")
        return (1, tp), ("dp", "tp")
    if s == "fsdp+tp":
        tp = cfg.tp_size or 2
        if world % tp or world // tp < 1:
            raise UserError(f"parallel.tp_size={tp} must divide the number of ranks ({world})")
        return (world // tp, tp), ("dp", "tp")
    if s == "pp":
        return (world,), ("pp",)
    return (world,), ("dp",)  # ddp, zero1, fsdp


@dataclass
class Layout:
    """What the trainer needs from a parallel layout."""

    strategy: str
    model: nn.Module  # the plain model (FSDP/TP turn its weights into DTensors in place)
    module: nn.Module  # what forward/backward run through: a DDP wrapper, or `model` itself
    info: DistInfo
    mesh: DeviceMesh | None = None
    dp_rank: int = 0
    dp_world: int = 1
    extras: dict = field(default_factory=dict)

    @property
    def distributed(self) -> bool:
        return self.info.world > 1

    def grad_sync(self, enabled: bool):
        """Context for one micro-batch's backward: skip the gradient all-reduce/reduce-scatter
        unless `enabled` (the last micro-batch of an accumulated step)."""
        if self.strategy in ("ddp", "zero1") and not enabled:
            return self.module.no_sync()
        if self.strategy in ("fsdp", "fsdp+tp"):
            self.model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()

    def global_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of a per-rank scalar over the data-parallel ranks (for logging); with pipelining,
        the last stage's value (only it computes the loss)."""
        if self.strategy == "pp":
            value = value.detach().clone().float()
            dist.broadcast(value, src=self.extras["last_rank"], group=self.extras["pp_group"])
            return value
        if not self.distributed or self.dp_world == 1:
            return value
        value = value.detach().clone().float()
        group = self.mesh["dp"].get_group()
        dist.all_reduce(value, group=group)
        return value / self.dp_world


def build_layout(model: nn.Module, cfg: ParallelConfig, info: DistInfo, *, precision: str,
                 compile: bool) -> Layout:
    shape, names = mesh_shape(cfg, info.world)
    if cfg.strategy == "single":
        model.to(info.device)
        from scaletrain.parallel.parallelize import apply_ac, apply_compile

        if cfg.activation_checkpointing:
            apply_ac(model)
        if compile:
            apply_compile(model)
        return Layout("single", model, model, info)
    mesh = init_device_mesh(info.device.type, shape, mesh_dim_names=names)
    model.to(info.device)
    if cfg.strategy == "pp":
        from scaletrain.parallel.pipeline import build_pipeline

        return build_pipeline(model, cfg, info, mesh, compile=compile)
    module = parallelize(model, cfg, mesh, precision=precision, compile=compile)
    dp_mesh = mesh["dp"]
    return Layout(cfg.strategy, model, module, info, mesh, dp_rank=dp_mesh.get_local_rank(),
                  dp_world=dp_mesh.size())


def wrap_optimizer(layout: Layout, groups: list[dict], factory) -> torch.optim.Optimizer:
    """The optimizer for the layout: `factory(groups)`, or ZeRO-1's sharded wrapper around it."""
    if layout.strategy != "zero1":
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
    if not grads:
        return torch.zeros(())
    plain = [g for g in grads if not isinstance(g, DTensor)]
    if len(plain) == len(grads) and pp_group is None:  # single, ddp, zero1: one norm, no extra ops
        return nn.utils.get_total_norm(plain)
    by_layout: dict = {}
    for g in grads:
        if isinstance(g, DTensor):
            by_layout.setdefault((g.device_mesh, g.placements), []).append(g)
    device = grads[0].device if not isinstance(grads[0], DTensor) else grads[0].to_local().device
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
