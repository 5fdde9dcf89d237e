"""Pipeline parallel: consecutive blocks per stage, GPipe or 1F1B micro-batch schedules
(`torch.distributed.pipelining`), alone (`pp`) or with each stage replicated (`pp+ddp`) or
sharded (`pp+fsdp`, FSDP2 on each stage) over the data-parallel ranks of a 2-D mesh (pp x dp).

Every rank builds the whole plain model (same seed, same weights); a rank trains only its stage —
a module the model family builds (`ParallelPlan.pipeline_stage`) that holds *the same
submodules under the same names* as the model, so its state dict is a slice of the full model's
and DCP checkpoints reshard to and from every other layout. With tied embeddings the first and
last stages both hold the shared matrix; its two gradient contributions are summed across them
after backward so both copies stay equal. For evaluation and export the stages' current weights
are broadcast so every rank holds the full model again.

The schedule is the train step's `forward_backward`: micro-batches in, the step's loss out (on the
last stage; zero elsewhere), gradients accumulated. Precision: each stage's forward (and the loss)
runs under autocast, except under FSDP, which casts the stage's parameters itself.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from scaletrain.errors import UserError
from scaletrain.models.family import ParallelPlan
from scaletrain.parallel.config import ParallelConfig
from scaletrain.parallel.dims import ParallelDims
from scaletrain.parallel.dist import DistInfo
from scaletrain.parallel.layout import Layout, Pipeline, autocast_context
from scaletrain.parallel.parallelize import apply_before_sharding, apply_fsdp, blocks_of
from scaletrain.parallel.state import meta_skeleton


def stage_layers(n_layer: int, stages: int, index: int) -> range:
    """Blocks of stage `index`: an even split, the first stages taking one more when uneven."""
    base, extra = divmod(n_layer, stages)
    start = index * base + min(index, extra)
    return range(start, start + base + (1 if index < extra else 0))


class AutocastStage(nn.Module):
    """Runs a stage's forward under autocast. It holds no parameter of its own: the stage is
    trained and checkpointed as it is; this wrapper only goes to the schedule."""

    def __init__(self, stage: nn.Module, autocast):
        super().__init__()
        self.stage, self._autocast = stage, autocast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast:
            return self.stage(x)


def owners(model: nn.Module, plan: ParallelPlan, stages: int) -> dict[str, int]:
    """{parameter name of the plain model: the stage that trains it} (a tied parameter: the first
    stage that holds it), found by building every stage: the family alone knows its layout."""
    n_layer = len(plan.blocks(model))
    stage_of = {}
    for s in range(stages):
        stage = plan.pipeline_stage(model, stage_layers(n_layer, stages, s), s == 0, s == stages - 1)
        for p in stage.parameters():
            stage_of.setdefault(p, s)
    return {name: stage_of[p] for name, p in model.named_parameters()}


def build_pipeline(model: nn.Module, plan: ParallelPlan | None, dims: ParallelDims, mesh, cfg: ParallelConfig,
                   info: DistInfo, *, precision: str, compile: bool, loss_fn) -> Layout:
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    blocks = blocks_of(model, plan, "parallel.strategy (pipeline)")
    if plan.pipeline_stage is None:
        raise UserError(f"parallel.strategy: {type(model).__name__} has no pipeline stages in its parallel plan")
    stages = dims.pp
    if len(blocks) < stages:
        raise UserError(f"parallel.strategy={dims.strategy}: {len(blocks)} blocks cannot fill {stages} stages "
                        "(the model's layers must be at least parallel.pp_size, or the ranks for pp)")
    if loss_fn is None:
        raise ValueError("build_pipeline: the schedule computes the loss: pass loss_fn")
    apply_before_sharding(model, plan, cfg, compile=compile)
    index = mesh["pp"].get_local_rank()
    first, last = index == 0, index == stages - 1
    group = mesh["pp"].get_group()
    owner = owners(model, plan, stages)
    # (shape, dtype) of every parameter, read before FSDP turns the stage's into shards
    shapes = {name: (p.shape, p.dtype) for name, p in model.named_parameters()}
    skeleton = meta_skeleton(model) if dims.fsdp else None  # FSDP shards the shared modules in place
    layers = stage_layers(len(blocks), stages, index)
    stage_module = plan.pipeline_stage(model, layers, first, last)

    tied = plan.tied_parameter(model)
    tied_name = _name_in(stage_module, tied) if tied is not None and (first or last) else None
    ends = _ends_groups(mesh, dims) if tied is not None else None  # every rank creates every group

    stage_precision = dims.autocast_precision(precision)
    autocast = autocast_context(info.device, stage_precision)
    runs = stage_module if stage_precision == "fp32" else AutocastStage(stage_module, autocast)
    if dims.fsdp:
        apply_fsdp(runs, [blocks[i] for i in layers], mesh["dp"], precision=precision,
                   reshard_after_forward=cfg.reshard_after_forward, cpu_offload=cfg.cpu_offload)
    replicas = mesh["dp"].get_group() if dims.ddp else None
    params = [p for p in stage_module.parameters() if p.requires_grad]
    if tied_name is not None:  # FSDP has replaced it by a DTensor parameter: the stage's own now
        tied = stage_module.get_parameter(tied_name)

    stage = PipelineStage(runs, stage_index=index, num_stages=stages, device=info.device, group=group)
    schedule_cls = Schedule1F1B if cfg.pp_schedule == "1f1b" else ScheduleGPipe

    def stage_loss(logits, y):  # the loss at the precision of the plain train step's
        with autocast:
            return loss_fn(logits, y)

    # scale_grads: each micro-batch's loss is a mean, so gradients are divided by their count.
    schedule = schedule_cls(stage, n_microbatches=cfg.pp_microbatches, loss_fn=stage_loss, scale_grads=True)
    zero = torch.zeros((), device=info.device)

    def forward_backward(micro_batches, weights=None) -> torch.Tensor:
        if weights is not None:
            raise UserError("optim.name=gd: pipelining splits each step into equal micro-batches and cannot "
                            "weight the last partial one; use optim.name=sgd with parallel.strategy=pp")
        if isinstance(micro_batches[0][0], dict):
            raise UserError("data.document_mask: pipeline stages take token ids only; use another layout")
        x = torch.cat([b[0] for b in micro_batches]).to(info.device)
        y = torch.cat([b[1] for b in micro_batches]).to(info.device)
        if x.shape[0] % cfg.pp_microbatches:
            raise UserError(f"parallel.pp_microbatches={cfg.pp_microbatches} must divide the step's "
                            f"batch of {x.shape[0]} samples (train.batch_size x train.grad_accum)")
        losses: list[torch.Tensor] = []
        if first:
            schedule.step(x, target=y if last else None, losses=losses if last else None, return_outputs=False)
        else:
            schedule.step(target=y if last else None, losses=losses if last else None, return_outputs=False)
        if replicas is not None:
            all_reduce_mean(params, replicas, dims.dp_replicate)
        if ends is not None and (first or last) and tied.grad is not None:
            # Both ends hold the tied matrix: sum the embedding's and the head's gradients.
            grad = tied.grad.to_local() if hasattr(tied.grad, "to_local") else tied.grad
            dist.all_reduce(grad, group=ends)
        return torch.stack(losses).mean().detach() if losses else zero

    def consolidate() -> nn.Module:
        return _consolidate(model, stage_module, skeleton, owner, shapes, index, group)

    pipe = Pipeline(group=group, last_rank=dist.get_global_rank(group, stages - 1), first=first, tied=tied,
                    forward_backward=forward_backward, consolidate=consolidate,
                    whole=skeleton if skeleton is not None else model)
    layout = Layout(dims, model, runs, stage_module, info, precision, mesh, pipeline=pipe)
    if dims.dp_enabled:
        layout.dp_rank, layout.dp_world = mesh["dp"].get_local_rank(), dims.dp_size
    return layout


@torch.no_grad()
def all_reduce_mean(params: list[nn.Parameter], group, size: int) -> None:
    """Average the gradients over the data-parallel replicas of a stage: one all-reduce of all of
    them, flattened, after the schedule (as Megatron-LM does with pipelining). DDP's own reducer
    does not survive a schedule's several backward passes per step (its bucket rebuild fails)."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat, group=group)
    flat /= size
    for grad, averaged in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        grad.copy_(averaged)


def _name_in(module: nn.Module, param: nn.Parameter) -> str | None:
    return next((n for n, p in module.named_parameters(remove_duplicate=False) if p is param), None)


def _ends_groups(mesh, dims: ParallelDims):
    """This rank's group of {first stage, last stage} in its pipeline (one per data-parallel
    index); creating a group is collective, so every rank creates all of them."""
    ranks = mesh.mesh.reshape(dims.pp, -1)  # [stage, dp index] -> global rank
    mine = None
    for j in range(ranks.shape[1]):
        group = dist.new_group(ranks=[int(ranks[0, j]), int(ranks[-1, j])])
        if dist.get_rank() in (int(ranks[0, j]), int(ranks[-1, j])):
            mine = group
    return mine


@torch.no_grad()
def _consolidate(model: nn.Module, stage: nn.Module, skeleton: nn.Module | None, owner: dict[str, int],
                 shapes: dict, index: int, group) -> nn.Module:
    """Broadcast every parameter from the stage that trains it, over this rank's pipeline, so each
    rank holds the whole model. Without FSDP that is `model` itself (the stages share its modules);
    with FSDP, whose stage parameters are shards, a plain copy built from `skeleton`."""
    own = dict(stage.named_parameters())
    full = {}
    for name, src in owner.items():  # the same names, in the same order, on every rank
        if skeleton is None:
            tensor = model.get_parameter(name).data
        elif src == index:  # gather the shards over this stage's data-parallel ranks
            shard = own[name]
            tensor = (shard.full_tensor() if hasattr(shard, "full_tensor") else shard).detach().clone()
        else:
            shape, dtype = shapes[name]
            tensor = torch.empty(shape, dtype=dtype, device=_device(stage))
        dist.broadcast(tensor, group_src=src, group=group)
        full[name] = tensor
    if skeleton is None:
        return model
    _assign(skeleton, full)
    return skeleton


def _assign(skeleton: nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Make `full`'s tensors the skeleton's parameters (first call: it is on the meta device) or
    copy them in; parameters the skeleton shares (a tied embedding) stay shared."""
    slots: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in skeleton.modules():
        for attr, p in module._parameters.items():
            if p is not None:
                slots.setdefault(id(p), []).append((module, attr))
    for name, tensor in full.items():
        param = skeleton.get_parameter(name)
        if not param.is_meta:
            param.copy_(tensor)
            continue
        new = nn.Parameter(tensor, requires_grad=False)
        for module, attr in slots[id(param)]:
            module._parameters[attr] = new


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters())
    return p.to_local().device if hasattr(p, "to_local") else p.device
