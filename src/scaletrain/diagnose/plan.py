"""`scaletrain plan`: memory per rank and step time of each layout, before anything is launched.

Memory is counted tensor by tensor from what PyTorch keeps during a step (docs/plan.md derives
each term and reports how close the model comes to measured peaks):

    peak = parameters + optimizer state + max(forward/backward phase, optimizer phase)

    forward/backward = activations saved for backward + the loss head's buffers + backward
                       transients (+ gradients already accumulated when grad_accum > 1)
    optimizer        = gradients + the optimizer's temporaries

plus what each layout adds (DDP's gradient buckets, FSDP's gathered units). Step time is FLOPs /
(peak x efficiency) plus communication bytes / link bandwidth, without overlap (an upper bound).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from scaletrain.config.schema import Config
from scaletrain.diagnose.devices import Device, get_device, with_memory
from scaletrain.errors import UserError
from scaletrain.models import get_family
from scaletrain.models.attention import explicit_attention_bytes
from scaletrain.models.family import DataShape, ModelSpec
from scaletrain.optim.registry import OPTIMIZERS
from scaletrain.parallel.config import ParallelConfig
from scaletrain.parallel.dims import ParallelDims

HEADROOM = 0.9  # plan to use at most 90 % of the memory: fragmentation and the runtime need the rest
# What a process holds before the model exists (interpreter, torch, CUDA context): the plan's
# figures exclude it (they are measured against it), the fit check adds it back.
RUNTIME_BYTES = {"cpu": 450 * 2**20, "cuda": 1 * 2**30}


def data_shape(cfg: Config) -> DataShape:
    """What the configured data gives the model, without reading it: the tokenizer's target
    vocabulary and the context (text), or the image set's pixels and classes (the digits set has
    64 inputs, MNIST from data.path 784)."""
    if cfg.data.kind == "text":
        return DataShape(vocab_size=cfg.data.vocab_size, seq_len=cfg.data.seq_len)
    return DataShape(input_dim=784 if cfg.data.path else 64, num_classes=10)


def model_spec(cfg: Config) -> ModelSpec:
    """The configured model's spec (its family's arithmetic), read from a meta-device build."""
    import torch

    family = get_family(cfg.model.name)
    with torch.device("meta"):
        model = family.module.from_args_dict(family.args_from_config(cfg.model, data_shape(cfg)))
    return family.spec(model)


@dataclass
class Candidate:
    strategy: str  # single, ddp, zero1, fsdp, fsdp-zero2, tp, fsdp+tp
    activation_checkpointing: bool
    cpu_offload: bool
    micro_batch: int
    grad_accum: int
    memory: dict  # parameters, gradients, optimizer_state, activations, temporary, peak (bytes/rank)
    step_seconds: float
    compute_seconds: float
    comm_seconds: float
    comm_bytes: float
    fits: bool = False
    tp_size: int = 1
    dp_size: int = 1  # data-parallel ranks: each reads micro_batch x grad_accum samples per step

    @property
    def layout(self) -> str:
        return self.strategy + (f" tp={self.tp_size}" if self.strategy == "fsdp+tp" else "") + \
            (" +ac" if self.activation_checkpointing else "") + (" +offload" if self.cpu_offload else "")


# ---- memory -----------------------------------------------------------------------------------

def _local(s: ModelSpec, dims: ParallelDims) -> float:
    """Parameters one rank keeps: TP splits the blocks' matmul weights, FSDP shards everything."""
    return (s.params - s.tp_params + s.tp_params / dims.tp) / dims.dp_shard


def memory(s: ModelSpec, optim: str, dims: ParallelDims, micro: int, accum: int, precision: str,
           ac: bool, offload: bool, device_kind: str, reshard_after_forward: bool = True) -> dict:
    """Bytes per rank of each term (docs/plan.md); `reshard_after_forward=False` is FSDP's ZeRO-2."""
    P = s.params
    local = _local(s, dims)
    params = 4 * local
    grads = 4 * local
    spec = OPTIMIZERS.get(optim)
    per_param = spec.state_bytes if spec is not None and spec.state_bytes is not None else 8.0
    state = per_param * local / (dims.dp_replicate if dims.zero1 else 1)
    opt_temp = 0.0 if spec is not None and spec.fused else 4 * local
    saved, transient = s.activation_bytes(micro, precision, ac, dims.tp)
    attention = getattr(s, "attention_shape", None)  # see ModelSpec
    if attention and precision == "bf16" and device_kind == "cpu":  # attention written out (models/attention.py)
        heads, kv_heads, head_dim = attention
        probs = explicit_attention_bytes(micro, s.units_per_sample, heads / dims.tp, kv_heads / dims.tp, head_dim)
        if ac:  # one block is recomputed at a time
            transient += probs
        else:
            saved += s.n_layer * probs
    extra = 0.0
    if dims.ddp:
        extra += 4 * local  # DDP's gradient buckets: a second copy of every gradient
    if dims.fsdp:
        block = s.block_params - (s.tp_params - s.tp_params / dims.tp) / max(s.n_layer, 1)  # one block, TP-local
        root = P - s.n_layer * s.block_params  # embeddings, head, final norm: gathered for the whole step
        pbytes = 2 if precision == "bf16" else 4
        gathered = root + 2 * block  # the current block and the prefetched next one
        if not reshard_after_forward:  # blocks stay gathered from their forward to their backward
            gathered = root + s.n_layer * block
        extra += pbytes * gathered + 4 * 2 * block  # + one unit's full gradient, reduce-scatter buffer
    if offload and device_kind != "cpu":  # the shards live in host memory
        params, grads, state, opt_temp = 0.0, 0.0, 0.0, 0.0
    grads_during = grads if accum > 1 else 0.0
    phase_backward = saved + transient + grads_during
    phase_optim = grads + opt_temp
    temporary = transient + extra + (opt_temp if phase_optim > phase_backward else 0.0)
    peak = params + state + extra + max(phase_backward, phase_optim)
    return {"parameters": params, "gradients": grads, "optimizer_state": state, "activations": saved,
            "temporary": temporary, "peak": peak}


# ---- time -------------------------------------------------------------------------------------

def step_time(s: ModelSpec, device: Device, dims: ParallelDims, micro: int, accum: int, precision: str,
              ac: bool, offload: bool, reshard_after_forward: bool = True) -> tuple[float, float, float]:
    """(compute seconds, communication seconds, communication bytes per rank) of one step."""
    world = dims.world
    units = micro * accum * dims.dp_size * s.units_per_sample  # the global batch
    flops = s.flops_per_unit * units / world
    if ac:  # the blocks' forward runs twice: +1/3 of their share of the FLOPs
        flops *= 1 + (s.n_layer * s.block_params) / max(s.params, 1) / 3
    peak = device.peak_flops.get(precision, device.peak_flops["fp32"])
    if device.kind == "cpu":
        peak /= world  # the ranks of this host share its cores
    compute = flops / (peak * device.efficiency)
    pbytes = 2 if precision == "bf16" else 4
    P = _local(s, dims) * dims.dp_shard  # what one data-parallel replica holds (TP-local)
    dp_ring = (dims.dp_size - 1) / dims.dp_size
    comm = 0.0
    if dims.ddp:
        comm += 2 * dp_ring * 4 * P + (dp_ring * 4 * P if dims.zero1 else 0.0)
    elif dims.fsdp:  # all-gather in forward (and again in backward unless ZeRO-2), reduce-scatter
        comm += dp_ring * P * ((2 if reshard_after_forward else 1) * pbytes + 4)
    if dims.tp_enabled:  # one all-reduce per sub-layer pair, forward and backward (+ recompute)
        per_allreduce = 2 * (dims.tp - 1) / dims.tp * micro * s.units_per_sample * s.hidden * pbytes
        comm += (4 + (2 if ac else 0)) * s.n_layer * per_allreduce * accum
    seconds = comm / device.link_bytes_per_s if world > 1 else 0.0
    if offload and device.kind != "cpu":
        seconds += 2 * 4 * s.params / world / device.host_link_bytes_per_s
    return compute, seconds, comm


# ---- candidates -------------------------------------------------------------------------------

@dataclass
class Plan:
    device: Device
    world: int
    global_batch: int
    precision: str
    optimizer: str
    spec: ModelSpec
    candidates: list[Candidate]
    best: Candidate | None

    def to_json(self) -> dict:
        return {"device": self.device.name, "device_memory_bytes": self.device.memory_bytes,
                "world_size": self.world, "global_batch": self.global_batch, "precision": self.precision,
                "optimizer": self.optimizer, "model": self.spec.kind, "parameters": self.spec.params,
                "best": _cand_json(self.best) if self.best else None,
                "candidates": [_cand_json(c) for c in self.candidates]}


def _cand_json(c: Candidate) -> dict:
    return {**asdict(c), "layout": c.layout}


def layouts(s: ModelSpec, world: int) -> list[tuple[str, ParallelDims]]:
    """(name, dims) of every layout to weigh on `world` ranks: what ParallelDims accepts, with tensor
    parallel only where the model's spec says `tp` ranks can split it. ZeRO-2 (`fsdp-zero2`) is
    FSDP that keeps parameters gathered between forward and backward. Pipelining is not planned."""
    if world == 1:
        return [("single", ParallelDims())]
    out = [(name, ParallelConfig(strategy=strategy).dims(world))
           for name, strategy in (("ddp", "ddp"), ("zero1", "zero1"), ("fsdp", "fsdp"), ("fsdp-zero2", "fsdp"))]
    if s.supports_tp(world):
        out.append(("tp", ParallelConfig(strategy="tp").dims(world)))
    for tp in range(2, world // 2 + 1):
        if world % tp == 0 and s.supports_tp(tp):
            out.append(("fsdp+tp", ParallelConfig(strategy="fsdp+tp", tp_size=tp).dims(world)))
    return out


def candidates(cfg: Config, s: ModelSpec, device: Device, world: int,
               precision: str | None = None) -> tuple[list[Candidate], int]:
    t = cfg.train
    precision = precision or t.precision
    # train.batch_size is the micro-batch of one data-parallel rank: with every rank data-parallel
    # the run reads batch_size x grad_accum x world samples per step. Every candidate keeps that
    # global batch, so the plan never changes the maths of training, only how the batch is split.
    global_batch = t.batch_size * t.grad_accum * world
    out = []
    for name, dims in layouts(s, world):
        dp = dims.dp_size
        if global_batch % dp:
            continue
        per_rank = global_batch // dp
        micros = sorted({m for m in (per_rank >> k for k in range(12)) if m >= 1 and per_rank % m == 0}, reverse=True)
        reshard = name != "fsdp-zero2"
        for ac in ([False, True] if s.n_layer > 0 else [False]):
            for offload in ([False, True] if name == "fsdp" and device.kind != "cpu" else [False]):
                for micro in micros:
                    accum = per_rank // micro
                    mem = memory(s, cfg.optim.name, dims, micro, accum, precision, ac, offload, device.kind,
                                 reshard)
                    comp, comm_s, comm_b = step_time(s, device, dims, micro, accum, precision, ac, offload,
                                                     reshard)
                    c = Candidate(name, ac, offload, micro, accum, mem, comp + comm_s, comp, comm_s, comm_b,
                                  tp_size=dims.tp, dp_size=dp)
                    c.fits = mem["peak"] + RUNTIME_BYTES[device.kind] <= HEADROOM * rank_memory(device, world)
                    out.append(c)
    return out, global_batch


def rank_memory(device: Device, world: int) -> float:
    """Memory one rank may use: a GPU's own, or its share of this host's (CPU ranks share it)."""
    return device.memory_bytes / world if device.kind == "cpu" else device.memory_bytes


def plan(cfg: Config, *, world_size: int | None = None, device: str | None = None,
         device_memory_bytes: int | None = None) -> Plan:
    world = world_size or cfg.parallel.nproc * cfg.parallel.nnodes
    if world < 1:
        raise UserError(f"--world-size must be >= 1, got {world}")
    if cfg.train.precision == "fp16":
        raise UserError("train.precision=fp16: plan models fp32 and bf16 only")
    dev = with_memory(get_device(device, cfg.train.threads), device_memory_bytes)
    precision = planned_precision(cfg.train.precision, dev)
    s = model_spec(cfg)
    cands, global_batch = candidates(cfg, s, dev, world, precision)
    if not cands:
        raise UserError(f"no layout splits the global batch of {global_batch} samples over {world} ranks; "
                        "change train.batch_size/grad_accum or --world-size")
    fitting = [c for c in cands if c.fits]
    # Fastest; among equals the larger micro-batch (bigger matmuls run closer to the peak).
    best = min(fitting, key=lambda c: (round(c.step_seconds, 9), -c.micro_batch, c.memory["peak"]), default=None)
    return Plan(dev, world, global_batch, precision, cfg.optim.name, s, cands, best)


def planned_precision(precision: str, device: Device) -> str:
    """train.precision as a run on `device` would take it: "auto" is this CPU's choice
    (hardware.choose_precision), or bf16 on a device whose bf16 peak is above its fp32 one."""
    if precision != "auto":
        return precision
    if device.kind == "cpu":
        from scaletrain import hardware

        return hardware.choose_precision("auto", "cpu")[0]
    return "bf16" if device.peak_flops.get("bf16", 0.0) > device.peak_flops["fp32"] else "fp32"


def _gib(x: float) -> str:
    return f"{x / 2**30:.2f}"


def _mib(x: float) -> str:
    return f"{x / 2**20:,.1f}"


def format_table(p: Plan, show_all: bool = False) -> str:
    rows = p.candidates
    if not show_all:  # per layout: its best fitting micro-batch, else its smallest footprint
        by_layout: dict[str, Candidate] = {}
        for c in rows:
            cur = by_layout.get(c.layout)
            key = (not c.fits, round(c.step_seconds, 9) if c.fits else c.memory["peak"], -c.micro_batch)
            if cur is None or key < (not cur.fits, round(cur.step_seconds, 9) if cur.fits else cur.memory["peak"],
                                     -cur.micro_batch):
                by_layout[c.layout] = c
        rows = list(by_layout.values())
    head = (f"plan: {p.spec.kind} with {p.spec.params / 1e6:.2f} M parameters, optimizer {p.optimizer}, "
            f"{p.precision}, global batch {p.global_batch}, {p.world} rank(s) of {p.device.name} "
            f"({_gib(rank_memory(p.device, p.world))} GiB per rank, {p.device.peak_flops.get(p.precision, 0) / 1e12:.3g} "
            f"TFLOP/s {p.precision} peak x {p.device.efficiency} assumed efficiency)")
    cols = ["layout", "micro x accum", "params", "grads", "optim", "activ.", "temp", "peak", "fits",
            "step s", "comm s"]
    lines = [head, "memory per rank in MiB (excluding the runtime); step time = compute + communication (no overlap)", "",
             "  ".join(f"{c:>10}" if i else f"{c:<20}" for i, c in enumerate(cols))]
    for c in sorted(rows, key=lambda c: (not c.fits, c.step_seconds)):
        m = c.memory
        cells = [c.layout, f"{c.micro_batch} x {c.grad_accum}", _mib(m["parameters"]), _mib(m["gradients"]),
                 _mib(m["optimizer_state"]), _mib(m["activations"]), _mib(m["temporary"]), _mib(m["peak"]),
                 "yes" if c.fits else "no", f"{c.step_seconds:.4g}", f"{c.comm_seconds:.3g}"]
        mark = "* " if c is p.best else "  "
        lines.append(mark + "  ".join(f"{x:>10}" if i else f"{x:<18}" for i, x in enumerate(cells)))
    if p.best is None:
        lines += ["", "no layout fits: more ranks (--world-size), a device with more memory, or a smaller model"]
    else:
        b = p.best
        lines += ["", f"recommended: {b.layout}, micro-batch {b.micro_batch} x {b.grad_accum} accumulation: "
                  f"{_gib(b.memory['peak'])} GiB per rank, {b.step_seconds:.4g} s per step"]
    return "\n".join(lines)


def layout_overrides(c: Candidate, world: int) -> dict:
    strategy = "fsdp" if c.strategy == "fsdp-zero2" else c.strategy
    out = {"parallel.strategy": strategy, "parallel.nproc": world if world > 1 else 1,
           "parallel.activation_checkpointing": c.activation_checkpointing,
           "parallel.reshard_after_forward": c.strategy != "fsdp-zero2",
           "parallel.cpu_offload": c.cpu_offload, "train.batch_size": c.micro_batch,
           "train.grad_accum": c.grad_accum}
    if c.strategy == "fsdp+tp":
        out["parallel.tp_size"] = c.tp_size
    return out


def write_config(cfg: Config, p: Plan, path: Path) -> None:
    from scaletrain.atomic import write_text_atomic
    from scaletrain.config.load import to_yaml

    data = cfg.model_copy(deep=True)
    for key, value in layout_overrides(p.best, p.world).items():
        section, name = key.split(".")
        if key == "parallel.nproc" and cfg.parallel.nnodes > 1:
            value = max(1, p.world // cfg.parallel.nnodes)
        setattr(getattr(data, section), name, value)
    Config.model_validate(data.model_dump())  # the written file must load
    write_text_atomic(path, f"# written by scaletrain plan: {p.best.layout}, {p.world} rank(s) of "
                      f"{p.device.name}\n" + to_yaml(data))
