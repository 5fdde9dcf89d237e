"""Apply a parallel layout to a plain model, one function per technique.

`parallelize(model, cfg, mesh)` applies, in this order (torchtitan's, for the same reasons):

1. tensor parallel — must see the plain `nn.Linear`s to swap their weights for DTensor shards;
2. activation checkpointing — wraps whole blocks, whatever their weights became;
3. compile — per block, after AC so the recomputation is compiled too;
4. FSDP or DDP — last, because they own the parameters' storage and the gradient communication.

The model code never imports `torch.distributed`; everything it needs to know (head count per
shard) it infers from tensor shapes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from scaletrain.config.schema import ParallelConfig
from scaletrain.errors import UserError

# Column-wise: output features split (whole heads / a slice of the MLP's hidden units per rank);
# row-wise: input features split, outputs summed by one all-reduce. One all-reduce per sub-layer.
GPT_TP_PLAN = {
    "attn.qkv": "colwise",
    "attn.proj": "rowwise",
    "mlp.fc": "colwise",
    "mlp.proj": "rowwise",
}


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise UserError(f"parallel: {type(model).__name__} has no `blocks` ModuleList; tensor "
                        "parallel, pipelining and per-block wrapping need one (the GPT has it)")
    return blocks


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Shard each block's attention and MLP over `tp_mesh` (Megatron-style column/row pairs)."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tp = tp_mesh.size()
    args = getattr(model, "args", None)
    if args is not None and (args.n_head % tp or args.d_ff % tp):
        raise UserError(f"parallel.tp_size={tp} must divide model.n_head ({args.n_head}) and the MLP "
                        f"width ({args.d_ff})")
    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    for block in transformer_blocks(model):
        plan = {name: styles[style]() for name, style in GPT_TP_PLAN.items()}
        parallelize_module(block, tp_mesh, plan)


def apply_ac(model: nn.Module) -> None:
    """Recompute every block's activations in backward instead of keeping them (non-reentrant)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        checkpoint_wrapper,
    )

    blocks = transformer_blocks(model)
    for i, block in enumerate(blocks):
        # get_state_dict/DCP strip the wrapper's `_checkpoint_wrapped_module.` from names, so
        # checkpoints stay loadable with AC on or off.
        blocks[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)


def apply_compile(model: nn.Module) -> None:
    """Compile each block in place (`Module.compile` keeps parameter names unchanged)."""
    for block in transformer_blocks(model):
        block.compile()


def fsdp_mixed_precision(precision: str):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "bf16":  # compute in bf16, reduce gradients in fp32, keep fp32 master weights
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def apply_fsdp(model: nn.Module, dp_mesh: DeviceMesh, *, precision: str, reshard_after_forward: bool,
               cpu_offload: bool) -> None:
    """FSDP2: each block is one communication unit, the root holds the rest (embeddings, head)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    kwargs = {
        "mesh": dp_mesh,
        "mp_policy": fsdp_mixed_precision(precision),
        "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy(),
    }
    blocks = getattr(model, "blocks", None)
    for block in blocks if isinstance(blocks, nn.ModuleList) else []:
        fully_shard(block, reshard_after_forward=reshard_after_forward, **kwargs)
    # The root's parameters are used last in forward and first in backward: keeping them gathered
    # after forward saves one all-gather.
    fully_shard(model, reshard_after_forward=False, **kwargs)


def apply_ddp(model: nn.Module, dp_mesh: DeviceMesh) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [model_device(model).index] if model_device(model).type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, process_group=dp_mesh.get_group())


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def parallelize(model: nn.Module, cfg: ParallelConfig, mesh: DeviceMesh | None, *, precision: str = "fp32",
                compile: bool = False) -> nn.Module:
    """Apply the configured layout; return the module to call for forward/backward.

    FSDP2 and TP change `model` in place (it is returned); DDP and ZeRO-1 return a wrapper whose
    `.module` is `model`. `mesh` has dims ("dp",) or ("dp", "tp"); None for a single process.
    """
    strategy = cfg.strategy
    if strategy in ("tp", "fsdp+tp"):
        apply_tp(model, mesh["tp"])
    if cfg.activation_checkpointing:
        apply_ac(model)
    if compile:
        apply_compile(model)
    if strategy in ("fsdp", "fsdp+tp"):
        apply_fsdp(model, mesh["dp"], precision=precision, reshard_after_forward=cfg.reshard_after_forward,
                   cpu_offload=cfg.cpu_offload)
        return model
    if strategy in ("ddp", "zero1"):
        return apply_ddp(model, mesh["dp"])
    return model
