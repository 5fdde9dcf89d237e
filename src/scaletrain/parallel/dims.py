"""The parallel layout as a typed object: how many ranks replicate, shard, split tensors and form
pipeline stages, built once from `parallel.strategy` and the world size (torchtitan's
`ParallelDims`). Every component asks it; nothing else reads the strategy string.

    strategy   dp_replicate  dp_shard  tp          pp          mesh (dims of size > 1)
    single     1             1         1           1           none
    ddp        N             1         1           1           (dp,)
    zero1      N             1         1           1           (dp,)   + optimizer state sharded
    fsdp       1             N         1           1           (dp,)
    tp         1             1         N           1           (tp,)
    fsdp+tp    1             N/tp      tp_size|2   1           (dp, tp)
    pp         1             1         1           N           (pp,)
    pp+ddp     N/pp          1         1           pp_size|2   (pp, dp)
    pp+fsdp    1             N/pp      1           pp_size|2   (pp, dp)

Ranks are laid out row-major over the mesh: on 4 ranks `pp+fsdp` puts ranks 0, 1 on the first
stage (one data-parallel group) and 2, 3 on the second, and ranks 0, 2 form one pipeline.

No torch at import: the config checks a layout against `parallel.nproc` before torch is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from scaletrain.errors import UserError

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

STRATEGIES = ("single", "ddp", "zero1", "fsdp", "tp", "fsdp+tp", "pp", "pp+ddp", "pp+fsdp")
# The layouts that need several ranks in two dimensions, and their default second degree.
DEFAULT_TP_SIZE = 2  # fsdp+tp
DEFAULT_PP_SIZE = 2  # pp+ddp, pp+fsdp


@dataclass(frozen=True)
class ParallelDims:
    dp_replicate: int = 1  # data-parallel replicas (DDP: full copies, gradients all-reduced)
    dp_shard: int = 1  # data-parallel shards (FSDP: parameters, gradients, optimizer state split)
    tp: int = 1  # tensor-parallel ranks (each block's matmuls split)
    pp: int = 1  # pipeline stages (consecutive blocks per rank)
    zero1: bool = False  # DDP replicas that shard the optimizer state (ZeroRedundancyOptimizer)

    def __post_init__(self) -> None:
        for name in ("dp_replicate", "dp_shard", "tp", "pp"):
            if getattr(self, name) < 1:
                raise ValueError(f"ParallelDims.{name} must be >= 1, got {getattr(self, name)}")
        if self.dp_replicate > 1 and self.dp_shard > 1:
            raise ValueError("ParallelDims: replicating and sharding at once (HSDP) is not a layout here")
        if self.zero1 and (self.dp_replicate == 1 or self.tp > 1 or self.pp > 1):
            raise ValueError("ParallelDims: zero1 shards the optimizer over DDP replicas only")

    @classmethod
    def from_config(cls, parallel, world: int) -> "ParallelDims":
        """The layout `parallel.strategy` (with `parallel.tp_size`, `parallel.pp_size`) asks of
        `world` ranks; a UserError naming the keys when it cannot be made."""
        s = parallel.strategy
        if s == "single":
            if world > 1:
                raise UserError(f"parallel.strategy: single, but {world} ranks were started; choose one of "
                                f"{', '.join(STRATEGIES[1:])}")
            return cls()
        if world == 1:
            raise UserError(f"parallel.strategy: {s} needs several processes; set parallel.nproc=N "
                            "(or start with torchrun --nproc-per-node N)")
        if s in ("ddp", "zero1"):
            return cls(dp_replicate=world, zero1=s == "zero1")
        if s == "fsdp":
            return cls(dp_shard=world)
        if s == "pp":
            return cls(pp=world)
        if s == "tp":
            tp = parallel.tp_size or world
            if tp != world:
                raise UserError(f"parallel.tp_size: {tp}, but strategy tp uses all {world} ranks for tensor "
                                "parallel; combine with data parallel through strategy fsdp+tp")
            return cls(tp=world)
        if s == "fsdp+tp":
            tp = parallel.tp_size or DEFAULT_TP_SIZE
            return cls(dp_shard=_rest(world, tp, "parallel.tp_size", s, alone="tp"), tp=tp)
        if s in ("pp+ddp", "pp+fsdp"):
            pp = parallel.pp_size or DEFAULT_PP_SIZE
            dp = _rest(world, pp, "parallel.pp_size", s, alone="pp")
            return cls(dp_replicate=dp, pp=pp) if s == "pp+ddp" else cls(dp_shard=dp, pp=pp)
        raise UserError(f"parallel.strategy: unknown {s!r}; choose one of {', '.join(STRATEGIES)}")

    # ---- what components ask ------------------------------------------------------------------
    @property
    def world(self) -> int:
        return self.dp_replicate * self.dp_shard * self.tp * self.pp

    @property
    def dp_size(self) -> int:
        """Data-parallel ranks: each reads its own slice of the global batch."""
        return self.dp_replicate * self.dp_shard

    @property
    def dp_enabled(self) -> bool:
        return self.dp_size > 1

    @property
    def ddp(self) -> bool:
        """DDP wraps the module (or each pipeline stage) and all-reduces gradients."""
        return self.dp_replicate > 1

    @property
    def fsdp(self) -> bool:
        """FSDP2 shards the module (or each pipeline stage) over the data-parallel ranks."""
        return self.dp_shard > 1

    @property
    def tp_enabled(self) -> bool:
        return self.tp > 1

    @property
    def pp_enabled(self) -> bool:
        return self.pp > 1

    @property
    def sharded_params(self) -> bool:
        """Parameters are DTensor shards (FSDP, TP): a full state dict is a collective, and an
        optimizer must run on DTensors."""
        return self.fsdp or self.tp_enabled

    @property
    def strategy(self) -> str:
        """The `parallel.strategy` this layout is (for messages and summaries)."""
        if self.pp_enabled:
            return "pp+fsdp" if self.fsdp else "pp+ddp" if self.ddp else "pp"
        if self.tp_enabled:
            return "fsdp+tp" if self.fsdp else "tp"
        if self.fsdp:
            return "fsdp"
        if self.ddp:
            return "zero1" if self.zero1 else "ddp"
        return "single"

    def autocast_precision(self, precision: str) -> str:
        """The precision autocast runs at. FSDP casts parameters itself (MixedPrecisionPolicy:
        bf16 compute, fp32 gradient reduction and master weights), so autocast stays off there;
        every other layout (pipeline stages included) computes under autocast."""
        return "fp32" if self.fsdp else precision

    # ---- the device mesh ----------------------------------------------------------------------
    def mesh_shape(self) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """(shape, dim names) of the device mesh: the dims of size > 1, in the order pp, dp, tp
        (TP innermost: its ranks talk most, so they are neighbours, on one node)."""
        dims = [(n, d) for n, d in (("pp", self.pp), ("dp", self.dp_size), ("tp", self.tp)) if d > 1]
        return tuple(d for _, d in dims), tuple(n for n, _ in dims)

    def build_mesh(self, device_type: str) -> DeviceMesh | None:
        """The device mesh over every rank (None for one process); each dim's process group is
        created here, on every rank, as collectives require."""
        shape, names = self.mesh_shape()
        if not shape:
            return None
        from torch.distributed.device_mesh import init_device_mesh

        return init_device_mesh(device_type, shape, mesh_dim_names=names)


def smallest_world(parallel) -> int:
    """The fewest ranks `parallel.strategy` runs on."""
    s = parallel.strategy
    if s == "single":
        return 1
    if s == "tp":
        return max(parallel.tp_size, 2)
    if s == "fsdp+tp":
        return 2 * (parallel.tp_size or DEFAULT_TP_SIZE)
    if s in ("pp+ddp", "pp+fsdp"):
        return 2 * (parallel.pp_size or DEFAULT_PP_SIZE)
    return 2


def _rest(world: int, degree: int, key: str, strategy: str, alone: str) -> int:
    """The data-parallel degree left when `degree` ranks form the other dimension."""
    if degree < 2 or world % degree:
        raise UserError(f"{key}: {degree} must be at least 2 and divide the number of ranks ({world}) "
                        f"for parallel.strategy={strategy}")
    if world // degree < 2:
        raise UserError(f"parallel.strategy: {strategy} on {world} ranks with {key}={degree} leaves one "
                        f"data-parallel rank; use parallel.strategy={alone}, or {2 * degree} ranks or more")
    return world // degree
