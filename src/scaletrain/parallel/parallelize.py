"""Apply a parallel layout to a plain model, one function per technique.

`parallelize(model, plan, dims, mesh, cfg)` applies, in this order (torchtitan's, for the same
reasons):

1. tensor parallel — must see the plain `nn.Linear`s to swap their weights for DTensor shards;
2. activation checkpointing — wraps whole blocks, whatever their weights became;
3. compile — per block, after AC so the recomputation is compiled too;
4. FSDP or DDP — last, because they own the parameters' storage and the gradient communication.

What to split comes from the model family's `ParallelPlan` (scaletrain.models.family): its blocks
and its tensor-parallel plan. Nothing here knows a module name. The model code never imports
`torch.distributed`; everything it needs to know (head count per shard) it infers from shapes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from scaletrain.errors import UserError
from scaletrain.models.family import ParallelPlan
from scaletrain.parallel.config import ParallelConfig
from scaletrain.parallel.dims import ParallelDims


def blocks_of(model: nn.Module, plan: ParallelPlan | None, what: str) -> nn.ModuleList:
    """The family's repeated blocks; a UserError naming `what` asked for them when it has none."""
    blocks = plan.blocks(model) if plan is not None else None
    if not isinstance(blocks, nn.ModuleList):
        raise UserError(f"{what}: {type(model).__name__} has no parallel plan with repeated blocks "
                        "(its model family declares none); choose another layout")
    return blocks


def apply_tp(model: nn.Module, plan: ParallelPlan | None, tp_mesh: DeviceMesh) -> None:
    """Shard each block's sub-modules over `tp_mesh` as the family's TP plan says (Megatron-style
    column/row pairs: one all-reduce per pair)."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    blocks = blocks_of(model, plan, "parallel.strategy (tensor parallel)")
    if not plan.tp_plan:
        raise UserError(f"parallel.strategy: {type(model).__name__} has no tensor-parallel plan")
    if plan.check_tp is not None:
        plan.check_tp(model, tp_mesh.size())
    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    for block in blocks:
        parallelize_module(block, tp_mesh, {name: styles[style]() for name, style in plan.tp_plan.items()})


def apply_ac(blocks: nn.ModuleList) -> None:
    """Recompute every block's activations in backward instead of keeping them (non-reentrant)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        checkpoint_wrapper,
    )

    for i, block in enumerate(blocks):
        # get_state_dict/DCP strip the wrapper's `_checkpoint_wrapped_module.` from names, so
        # checkpoints stay loadable with AC on or off.
        blocks[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)


def apply_compile(model: nn.Module, plan: ParallelPlan | None) -> None:
    """Compile each block in place (`Module.compile` keeps parameter names unchanged); a family
    without blocks is compiled whole."""
    if plan is None:
        model.compile()
        return
    for block in plan.blocks(model):
        block.compile()


def fsdp_mixed_precision(precision: str):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "bf16":  # compute in bf16, reduce gradients in fp32, keep fp32 master weights
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def apply_fsdp(root: nn.Module, units: Iterable[nn.Module], dp_mesh: DeviceMesh, *, precision: str,
               reshard_after_forward: bool, cpu_offload: bool) -> None:
    """FSDP2: each unit (a block) is one communication unit, the root holds the rest (embeddings,
    head)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    kwargs = {
        "mesh": dp_mesh,
        "mp_policy": fsdp_mixed_precision(precision),
        "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy(),
    }
    for unit in units:
        fully_shard(unit, reshard_after_forward=reshard_after_forward, **kwargs)
    # The root's parameters are used last in forward and first in backward: keeping them gathered
    # after forward saves one all-gather.
    fully_shard(root, reshard_after_forward=False, **kwargs)


def apply_ddp(module: nn.Module, dp_mesh: DeviceMesh) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    device = model_device(module)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, process_group=dp_mesh.get_group())


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def apply_before_sharding(model: nn.Module, plan: ParallelPlan | None, cfg: ParallelConfig, *,
                          compile: bool) -> None:
    """Steps 2 and 3 (activation checkpointing, compile), the same for every layout."""
    if cfg.activation_checkpointing:
        apply_ac(blocks_of(model, plan, "parallel.activation_checkpointing"))
    if compile:
        apply_compile(model, plan)


def apply_data_parallel(module: nn.Module, units: Iterable[nn.Module], dims: ParallelDims,
                        mesh: DeviceMesh | None, cfg: ParallelConfig, *, precision: str) -> nn.Module:
    """Step 4: FSDP (in place: `module` is returned) or DDP (a wrapper) over the mesh's dp dim."""
    if dims.fsdp:
        apply_fsdp(module, units, mesh["dp"], precision=precision,
                   reshard_after_forward=cfg.reshard_after_forward, cpu_offload=cfg.cpu_offload)
    elif dims.ddp:
        return apply_ddp(module, mesh["dp"])
    return module


def parallelize(model: nn.Module, plan: ParallelPlan | None, dims: ParallelDims, mesh: DeviceMesh | None,
                cfg: ParallelConfig, *, precision: str = "fp32", compile: bool = False) -> nn.Module:
    """Apply the layout `dims` (without pipelining: see pipeline.py); return the module to call
    for forward/backward.

    FSDP2 and TP change `model` in place (it is returned); DDP and ZeRO-1 return a wrapper whose
    `.module` is `model`."""
    if dims.tp_enabled:
        apply_tp(model, plan, mesh["tp"])
    apply_before_sharding(model, plan, cfg, compile=compile)
    units = plan.blocks(model) if plan is not None and dims.fsdp else ()
    return apply_data_parallel(model, units, dims, mesh, cfg, precision=precision)
