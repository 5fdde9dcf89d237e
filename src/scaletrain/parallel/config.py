"""The `parallel:` section: how training is spread over processes (`torchrun` ranks); see
docs/parallel.md. The strategy string is read once, into `ParallelDims` (dims.py). No torch here."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from scaletrain.errors import UserError
from scaletrain.parallel.dims import STRATEGIES, ParallelDims, smallest_world
from scaletrain.sections import MAX_BATCH, MAX_NODES, MAX_PROCS, MAX_TIMEOUT, NonNegInt, Section

Strategy = Literal[STRATEGIES]  # type: ignore[valid-type]


class ParallelConfig(Section):
    # single: one process. ddp: replicate, all-reduce gradients. zero1: ddp + optimizer state
    # sharded (ZeroRedundancyOptimizer). fsdp: FSDP2 fully_shard (parameters, gradients and
    # optimizer state sharded). tp: tensor parallel (attention heads and MLP split over ranks).
    # fsdp+tp: a 2-D mesh (dp x tp). pp: pipeline stages over the model's blocks; pp+ddp, pp+fsdp:
    # a 2-D mesh (pp x dp), each stage replicated or sharded over its data-parallel ranks.
    strategy: Strategy = "single"
    nproc: Annotated[int, Field(gt=0, le=MAX_PROCS)] = 1  # processes per node; > 1: `scaletrain train` starts torchrun
    # More processes than this machine's CPU cores (or CUDA devices) are refused at launch unless this
    # is true (oversubscribed ranks crawl, and CUDA ranks beyond the devices cannot start).
    oversubscribe: bool = False
    nnodes: Annotated[int, Field(gt=0, le=MAX_NODES)] = 1  # > 1: every node runs the same command with parallel.rdzv_endpoint
    rdzv_endpoint: str | None = None  # host:port of the c10d rendezvous (multi-node)
    tp_size: NonNegInt = 0  # ranks per tensor-parallel group; 0: all ranks (tp) or 2 (fsdp+tp)
    pp_size: NonNegInt = 0  # pipeline stages; 0: all ranks (pp) or 2 (pp+ddp, pp+fsdp)
    reshard_after_forward: bool = True  # fsdp: True = ZeRO-3, False = ZeRO-2 (keep params gathered)
    cpu_offload: bool = False  # fsdp: parameters, gradients and optimizer state live on the CPU
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    pp_schedule: Literal["gpipe", "1f1b"] = "1f1b"
    pp_microbatches: Annotated[int, Field(gt=0, le=MAX_BATCH)] = 2  # pp: the step's batch is split into this many
    max_restarts: NonNegInt = 0  # torchrun restarts the group this often after a rank dies
    timeout_seconds: Annotated[float, Field(gt=0.0, le=MAX_TIMEOUT)] = 300.0  # a collective waiting longer fails
    straggler_factor: Annotated[float, Field(gt=1.0)] = 1.5  # a rank slower than median x this is flagged

    @model_validator(mode="after")
    def _consistent(self) -> "ParallelConfig":
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("parallel.nnodes > 1 needs parallel.rdzv_endpoint (host:port of the rendezvous)")
        try:
            self.dims()  # the layout is checked before anything starts
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return self

    def dims(self, world: int | None = None) -> ParallelDims:
        """The layout on `world` ranks; by default parallel.nproc x parallel.nnodes, or, when that is
        1 (torchrun started without `parallel.nproc` says the world only at launch), the fewest
        ranks the strategy runs on: its kind (what it shards, replicates, splits) is the same."""
        if world is None:
            world = self.nproc * self.nnodes
            world = world if world > 1 else smallest_world(self)
        return ParallelDims.from_config(self, world)
