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

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scaletrain.config.schema import Config
from scaletrain.diagnose.devices import Device, get_device, with_memory
from scaletrain.errors import UserError

# Optimizer state, bytes per fp32 parameter (docs/optimizers.md, measured from the state tensors).
STATE_BYTES = {"sgd": 0.0, "gd": 0.0, "momentum": 4.0, "nesterov": 4.0, "adam": 8.0, "adamw": 8.0,
               "lamb": 8.0, "lars": 4.0, "lion": 4.0, "muon": 4.0, "adagrad": 4.0, "rmsprop": 4.0,
               "adafactor": 0.05, "adamw8bit": 2.03}
# Temporaries of one optimizer step, in units of the parameters' bytes: fused Adam(W) updates in
# place; the foreach paths of the others build about one parameter-sized list of intermediates.
FUSED = {"adam", "adamw"}
HEADROOM = 0.9  # plan to use at most 90 % of the memory: fragmentation and the runtime need the rest
# What a process holds before the model exists (interpreter, torch, CUDA context): the plan's
# figures exclude it (they are measured against it), the fit check adds it back.
RUNTIME_BYTES = {"cpu": 450 * 2**20, "cuda": 1 * 2**30}


ROPE_EXTRA_D = 5  # see activation_bytes


@dataclass
class Shape:
    """What the memory and time model needs from a model, read from a meta-device build."""

    kind: str  # "gpt" or "mlp"
    params: int
    block_params: int  # one transformer block (0 for the MLP)
    tp_params: int  # the block weights tensor parallel shards
    matmul_params: int  # weights used in matmuls (autocast keeps a bf16 copy of each for backward)
    flops_per_unit: float  # training FLOPs per token (GPT) or sample (MLP)
    units_per_sample: int  # seq_len for the GPT, 1 for the MLP
    n_layer: int = 0
    d_model: int = 0
    n_head: int = 0
    d_ff: int = 0
    vocab: int = 0
    rope: bool = False
    dropout: float = 0.0
    widths: list = field(default_factory=list)  # MLP: input, hidden..., classes


def model_shape(cfg: Config) -> Shape:
    import torch

    from scaletrain.models import build_model

    m = cfg.model
    if m.name == "gpt":
        args = {**m.model_dump(exclude={"name"}), "vocab_size": cfg.data.vocab_size, "seq_len": cfg.data.seq_len}
    else:  # the digits set has 64 inputs; MNIST (data.path) 784
        args = {"input_dim": 784 if cfg.data.path else 64, "num_classes": 10, "hidden": list(m.hidden),
                "dropout": m.dropout}
    with torch.device("meta"):
        model = build_model(m.name, args)
    params = sum(p.numel() for p in model.parameters())
    matmul = sum(mod.weight.numel() for mod in model.modules() if isinstance(mod, torch.nn.Linear))
    if m.name == "mlp":
        return Shape("mlp", params, 0, 0, matmul, model.flops_per_sample(), 1,
                     widths=[args["input_dim"], *args["hidden"], 10], dropout=m.dropout)
    a = model.args
    block = sum(p.numel() for p in model.blocks[0].parameters())
    tp = sum(getattr(model.blocks[0], n.split(".")[0]).get_submodule(n.split(".", 1)[1]).weight.numel()
             for n in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")) * a.n_layer
    return Shape("gpt", params, block, tp, matmul, model.flops_per_token(), a.seq_len, a.n_layer, a.d_model,
                 a.n_head, a.d_ff, a.vocab_size, a.rope, a.dropout)


@dataclass
class Candidate:
    strategy: str  # single, ddp, zero1, fsdp, fsdp-zero2, tp
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

    @property
    def layout(self) -> str:
        return self.strategy + (" +ac" if self.activation_checkpointing else "") + \
            (" +offload" if self.cpu_offload else "")


# ---- memory -----------------------------------------------------------------------------------

def activation_bytes(s: Shape, micro: int, precision: str, ac: bool, tp: int = 1) -> tuple[float, float]:
    """(saved for backward, transient peak on top of it) for one micro-batch, bytes per rank.

    GPT, per token and block, fp32: norm1 out d, qkv 3d, attention out d, its contiguous copy d,
    residual d, norm2 out d, fc out 4d, gelu out 4d, block output d = 17d (rotary q, k: +2d; a
    d_ff other than 4d changes the 8d). The loss head keeps log-softmax (V) and, in backward, two
    more V-sized gradients live at once.
    """
    if s.kind == "mlp":
        w = s.widths
        saved = micro * 4 * (w[0] + sum(2 * h for h in w[1:-1]) + 2 * w[-1])
        return saved, micro * 4 * (2 * max(w) + 2 * w[-1])
    m, d, ff, V = micro * s.units_per_sample, s.d_model, s.d_ff, s.vocab
    sharded = 3 * d + d + d + 2 * ff + (2 * d if s.rope else 0)  # split over tp ranks
    # norm1 out, residual, norm2 out, block output; with rotary positions + ROPE_EXTRA_D: measured
    # on the grid of docs/plan.md (rotary blocks hold ~5d per token more than the rotated q, k
    # counted above; learned positions match the count within 1-3 %).
    full = d + d + d + d + (ROPE_EXTRA_D * d if s.rope else 0)
    if precision == "bf16":  # linear inputs/outputs in bf16, residual stream and norms in fp32
        # bf16: the sharded tensors, the norms' outputs cast for their linears and the proj input
        # copy (2 bytes); fp32: the residual and the block output (norms run in fp32 under autocast)
        per_block = m * (2 * sharded / tp + 2 * 3 * d + 4 * 2 * d)
        head_saved, head_peak = m * 4 * V, m * 10 * V
        weights = 2 * s.matmul_params / tp  # autocast's bf16 weight copies, saved by each linear
    else:
        per_block = m * 4 * (sharded / tp + full)
        head_saved, head_peak = m * 4 * V, m * 4 * 2 * V
        weights = 0.0
    if s.dropout > 0:  # masks (1 byte) and outputs; attention dropout leaves the flash kernel
        per_block += m * 3 * 5 * d + micro * (s.n_head / tp) * s.units_per_sample ** 2 * 5
    embed = m * 4 * d * (1 if s.rope else 2)
    backward = m * 4 * (2 * ff + 3 * d) / tp  # gradients of the MLP's hidden and the q, k, v in flight
    if ac:  # each block keeps only its input; one block is recomputed at a time in backward
        saved = embed + s.n_layer * m * 4 * d + m * 4 * d + head_saved + weights
        return saved, head_peak + per_block + backward
    return embed + s.n_layer * per_block + m * 4 * d + head_saved + weights, head_peak + backward


def memory(s: Shape, optim: str, strategy: str, world: int, micro: int, accum: int, precision: str,
           ac: bool, offload: bool, device_kind: str) -> dict:
    P = s.params
    shard = world if strategy in ("fsdp", "fsdp-zero2") else 1
    tp = world if strategy == "tp" else 1
    local = (P - s.tp_params + s.tp_params / tp) / shard  # parameters this rank keeps
    params = 4 * local
    grads = 4 * local
    state = STATE_BYTES.get(optim, 8.0) * local / (world if strategy == "zero1" else 1)
    opt_temp = 0.0 if optim in FUSED else 4 * local
    saved, transient = activation_bytes(s, micro, precision, ac, tp)
    extra = 0.0
    if strategy in ("ddp", "zero1"):
        extra += 4 * P  # DDP's gradient buckets: a second copy of every gradient
    if shard > 1:
        root = P - s.n_layer * s.block_params  # embeddings, head, final norm: gathered for the whole step
        pbytes = 2 if precision == "bf16" else 4
        gathered = root + 2 * s.block_params  # the current block and the prefetched next one
        if strategy == "fsdp-zero2":  # blocks stay gathered from their forward to their backward
            gathered = root + s.n_layer * s.block_params
        extra += pbytes * gathered + 4 * 2 * s.block_params  # + one unit's full gradient, reduce-scatter buffer
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

def step_time(s: Shape, device: Device, strategy: str, world: int, micro: int, accum: int, precision: str,
              ac: bool, offload: bool) -> tuple[float, float, float]:
    """(compute seconds, communication seconds, communication bytes per rank) of one step."""
    dp = 1 if strategy == "tp" else world
    units = micro * accum * dp * s.units_per_sample  # the global batch
    flops = s.flops_per_unit * units / world
    if ac:  # the blocks' forward runs twice: +1/3 of their share of the FLOPs
        flops *= 1 + (s.n_layer * s.block_params) / max(s.params, 1) / 3
    peak = device.peak_flops.get(precision, device.peak_flops["fp32"])
    if device.kind == "cpu":
        peak /= world  # the ranks of this host share its cores
    compute = flops / (peak * device.efficiency)
    ring = (world - 1) / world
    P, pbytes = s.params, (2 if precision == "bf16" else 4)
    comm = 0.0
    if strategy in ("ddp", "zero1"):
        comm = 2 * ring * 4 * P + (ring * 4 * P if strategy == "zero1" else 0.0)
    elif strategy == "fsdp":
        comm = ring * P * (2 * pbytes + 4)  # all-gather in forward and in backward, reduce-scatter
    elif strategy == "fsdp-zero2":
        comm = ring * P * (pbytes + 4)
    elif strategy == "tp":
        per_allreduce = 2 * ring * micro * s.units_per_sample * s.d_model * pbytes
        comm = (4 + (2 if ac else 0)) * s.n_layer * per_allreduce * accum
    seconds = comm / device.link_bytes_per_s if world > 1 else 0.0
    if offload and device.kind != "cpu":
        seconds += 2 * 4 * P / world / device.host_link_bytes_per_s
    return compute, seconds, comm


# ---- candidates -------------------------------------------------------------------------------

@dataclass
class Plan:
    device: Device
    world: int
    global_batch: int
    precision: str
    optimizer: str
    shape: Shape
    candidates: list[Candidate]
    best: Candidate | None

    def to_json(self) -> dict:
        return {"device": self.device.name, "device_memory_bytes": self.device.memory_bytes,
                "world_size": self.world, "global_batch": self.global_batch, "precision": self.precision,
                "optimizer": self.optimizer, "parameters": self.shape.params,
                "best": _cand_json(self.best) if self.best else None,
                "candidates": [_cand_json(c) for c in self.candidates]}


def _cand_json(c: Candidate) -> dict:
    return {**asdict(c), "layout": c.layout}


def strategies(s: Shape, world: int) -> list[str]:
    if world == 1:
        return ["single"]
    out = ["ddp", "zero1", "fsdp", "fsdp-zero2"]
    if s.kind == "gpt" and s.n_head % world == 0 and s.d_ff % world == 0:
        out.append("tp")
    return out


def candidates(cfg: Config, s: Shape, device: Device, world: int) -> tuple[list[Candidate], int]:
    t = cfg.train
    # train.batch_size is the micro-batch of one data-parallel rank: on `world` ranks the run reads
    # batch_size x grad_accum x world samples per step. Every candidate keeps that global batch, so
    # the plan never changes the maths of training, only how the batch is split.
    global_batch = t.batch_size * t.grad_accum * world
    out = []
    for strategy in strategies(s, world):
        dp = 1 if strategy == "tp" else world
        if global_batch % dp:
            continue
        per_rank = global_batch // dp
        micros = sorted({m for m in (per_rank >> k for k in range(12)) if m >= 1 and per_rank % m == 0}, reverse=True)
        for ac in ([False, True] if s.kind == "gpt" else [False]):
            for offload in ([False, True] if strategy == "fsdp" and device.kind != "cpu" else [False]):
                for micro in micros:
                    accum = per_rank // micro
                    mem = memory(s, cfg.optim.name, strategy, world, micro, accum, t.precision, ac, offload,
                                 device.kind)
                    comp, comm_s, comm_b = step_time(s, device, strategy, world, micro, accum, t.precision, ac,
                                                     offload)
                    c = Candidate(strategy, ac, offload, micro, accum, mem, comp + comm_s, comp, comm_s, comm_b)
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
    s = model_shape(cfg)
    cands, global_batch = candidates(cfg, s, dev, world)
    if not cands:
        raise UserError(f"no layout splits the global batch of {global_batch} samples over {world} ranks; "
                        "change train.batch_size/grad_accum or --world-size")
    fitting = [c for c in cands if c.fits]
    # Fastest; among equals the larger micro-batch (bigger matmuls run closer to the peak).
    best = min(fitting, key=lambda c: (round(c.step_seconds, 9), -c.micro_batch, c.memory["peak"]), default=None)
    return Plan(dev, world, global_batch, cfg.train.precision, cfg.optim.name, s, cands, best)


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
    head = (f"plan: {p.shape.kind} with {p.shape.params / 1e6:.2f} M parameters, optimizer {p.optimizer}, "
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
    return {"parallel.strategy": strategy, "parallel.nproc": world if world > 1 else 1,
            "parallel.activation_checkpointing": c.activation_checkpointing,
            "parallel.reshard_after_forward": c.strategy != "fsdp-zero2",
            "parallel.cpu_offload": c.cpu_offload, "train.batch_size": c.micro_batch,
            "train.grad_accum": c.grad_accum}


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
