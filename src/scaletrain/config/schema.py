"""Typed configuration: one small section per component, composed by `Config`.

Every section forbids unknown keys and checks types strictly (no silent "3" -> 3), so a typo or a
wrong value is reported by name before any work starts. The YAML presets in `configs/` and the
`section.key=value` overrides of the CLI both go through these models; nothing else reads settings.
"""

from __future__ import annotations

import os
import reprlib
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# The registry's built-in names (scaletrain.optim.registry; a test keeps the two equal).
BUILTIN_OPTIMIZERS = (
    "adafactor", "adagrad", "adam", "adamw", "adamw8bit", "gd", "lamb", "lars", "lion", "momentum", "muon",
    "nesterov", "rmsprop", "sgd",
)

# Optimizers measured to fail on FSDP/TP's DTensor parameters (docs/optimizers.md), and why.
_NEEDS_PLAIN_TENSORS = {
    "adafactor": "its factored row/column statistics need the whole matrix",
    "adamw8bit": "bitsandbytes kernels take plain tensors only",
}

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]

# Upper bounds. Each is far above what any real run uses and only stops a typo or a hostile file
# from asking for an absurd allocation, a run that can never end or an integer that overflows
# int64 in torch, numpy or a checkpoint.
INT64 = 2**63  # every integer of the config fits a signed 64-bit integer (checked on every section)
MAX_STEPS = 10**9  # optimizer steps, evaluation/checkpoint intervals: ~1000x the longest runs published
MAX_BATCH = 1 << 20  # samples per rank per micro-batch
MAX_GRAD_ACCUM = 1 << 16  # micro-batches per step
MAX_SEQ_LEN = 1 << 20  # tokens per sample: the longest-context models train at 1M tokens
MAX_BATCH_TOKENS = 1 << 31  # batch x seq_len per micro-batch: int32 indexing limits of some kernels
MAX_VOCAB = 1 << 21  # 8x the largest production vocabularies (Gemma: 262,144)
MAX_WIDTH = 1 << 17  # model.d_model (GPT-3: 12,288) and MLP layer widths
MAX_FF = 1 << 20  # model.d_ff
MAX_LAYERS = 1 << 12  # model.n_layer (DeepNet trained 1,000 layers)
MAX_PROCS = 1 << 12  # processes per node, even with parallel.oversubscribe
MAX_NODES = 1 << 16  # nodes (the largest clusters have ~25,000 GPU nodes)
MAX_THREADS = 1 << 12  # torch intra-op threads (the largest single machines have ~2,000)
MAX_SAMPLE_TOKENS = 1 << 16  # the report's sample: generation has no KV cache (`generate --tokens` for more)
MAX_TIMEOUT = 30 * 24 * 3600.0  # seconds; beyond this a timedelta of the collective timeout overflows soon

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 40, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 4
_REPR.maxdict, _REPR.maxlevel = 3, 2


def brief(value: object) -> str:
    """A short repr for an error line: long strings and containers are cut, never walked whole
    (a value from a hostile file may be huge)."""
    try:
        return _REPR.repr(value)
    except Exception:  # noqa: BLE001 - an int beyond Python's digit limit, a broken __repr__
        return type(value).__name__


def _out_of_range(value: object) -> str | None:
    """Why a value (or an item inside a list/dict value) is unfit for any field, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not -INT64 <= value < INT64:
        return "must fit a 64-bit integer (between -2**63 and 2**63 - 1)"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # e.g. undecodable argv bytes: config.yaml could not hold it
            return "not valid UTF-8 text"
    if isinstance(value, (list, tuple)):
        return next(filter(None, map(_out_of_range, value)), None)
    if isinstance(value, dict):
        return next(filter(None, map(_out_of_range, [*value.keys(), *value.values()])), None)
    return None


class Section(BaseModel):
    # allow_inf_nan=False: `.inf`, `nan` and `1e400` (which YAML reads as inf) are refused in every
    # float field, including those inside lists and dicts and fields added later.
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _fits(cls, value: object) -> object:
        problem = _out_of_range(value)
        if problem:
            raise ValueError(problem)
        return value


def _expandable(path: str | None) -> str | None:
    """A folder to create later: `~user` must name a known user (pathlib raises RuntimeError)."""
    if path is not None:
        try:
            Path(path).expanduser()
        except RuntimeError:
            raise ValueError(f"no home folder for the user in {brief(path)}") from None
    return path


def _exists(path: str, kind: str = "any") -> bool:
    """Whether a path exists, False for names the OS refuses (too long, a NUL byte)."""
    try:
        p = Path(path).expanduser()
        return p.is_dir() if kind == "dir" else p.is_file() if kind == "file" else p.exists()
    except (OSError, ValueError, RuntimeError):  # RuntimeError: `~nosuchuser`
        return False


class MixtureSource(Section):
    """One prepared directory (`scaletrain prepare --out DIR`) of a data mixture."""

    path: str
    weight: Annotated[float, Field(gt=0.0)] = 1.0

    @field_validator("path")
    @classmethod
    def _prepared(cls, path: str) -> str:
        if not _exists(os.path.join(path, "manifest.json"), "file"):
            raise ValueError(f"data.mixture: {brief(path)} is not a prepared directory (no manifest.json)")
        return path


class DataConfig(Section):
    """Where the training data comes from and how it is cut into samples."""

    kind: Literal["text", "images"] = "text"
    # text: a directory of text files (None = the embedded stdlib corpus);
    # images: a directory of MNIST IDX files (None = scikit-learn's embedded digits).
    path: str | None = None
    pattern: str = "**/*.txt"  # which files of `path` are read (text only)
    vocab_size: Annotated[int, Field(ge=258, le=MAX_VOCAB)] = 8192  # 256 bytes + end-of-text + merges
    seq_len: Annotated[int, Field(gt=0, le=MAX_SEQ_LEN)] = 256
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05  # by file for text, stratified for images
    train_fraction: Fraction = 1.0  # a deterministic subset of the training samples
    max_bytes: PositiveInt | None = None  # a deterministic subset of the corpus files, for quick runs
    standardize: bool = True  # images: z-score each input feature with training-split statistics
    cache_dir: str = "~/.cache/scaletrain/data"
    # text: inputs become {"idx", "doc_ids"} so attention stays inside each packed document
    document_mask: bool = False
    # text: train on several `scaletrain prepare` directories mixed by weight (instead of data.path)
    mixture: list[MixtureSource] | None = None

    _cache_dir_home = field_validator("cache_dir")(_expandable)

    @field_validator("pattern")
    @classmethod
    def _relative_pattern(cls, pattern: str) -> str:
        # The pattern selects files *under* data.path: an absolute one or one with `..` would read
        # elsewhere (pathlib refuses the first with a traceback and follows the second).
        if not pattern:
            raise ValueError("empty; give a glob under data.path such as **/*.txt")
        if PurePosixPath(pattern).is_absolute() or pattern.startswith("~") or ".." in PurePosixPath(pattern).parts:
            raise ValueError(f"{brief(pattern)} must stay under data.path: a relative glob without '..' "
                             "(such as **/*.txt)")
        return pattern

    @model_validator(mode="after")
    def _path_exists(self) -> "DataConfig":
        if self.path is not None and not _exists(self.path, "dir"):
            raise ValueError(f"data.path: directory {brief(self.path)} does not exist")
        if self.mixture is not None:
            if self.kind != "text" or self.path is not None:
                raise ValueError("data.mixture: mixes prepared text directories; it replaces data.path "
                                 "(leave data.path unset) and needs data.kind=text")
            if not self.mixture:
                raise ValueError("data.mixture: an empty list; give at least one {path, weight}")
        return self


class GPTConfig(Section):
    name: Literal["gpt"] = "gpt"
    n_layer: Annotated[int, Field(gt=0, le=MAX_LAYERS)] = 4
    n_head: Annotated[int, Field(gt=0, le=MAX_WIDTH)] = 4
    d_model: Annotated[int, Field(gt=0, le=MAX_WIDTH)] = 256
    d_ff: Annotated[int, Field(gt=0, le=MAX_FF)] | None = None  # default 4 * d_model
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    bias: bool = False
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    rope: bool = False
    tie_embeddings: bool = True

    @model_validator(mode="after")
    def _heads_divide(self) -> "GPTConfig":
        if self.d_model % self.n_head:
            raise ValueError(
                f"model.d_model: {self.d_model} must be divisible by model.n_head ({self.n_head})"
            )
        return self


class MLPConfig(Section):
    name: Literal["mlp"] = "mlp"
    hidden: Annotated[list[Annotated[int, Field(gt=0, le=MAX_WIDTH)]], Field(max_length=MAX_LAYERS)] = [128, 64]
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0


ModelConfig = Annotated[Union[GPTConfig, MLPConfig], Field(discriminator="name")]


Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class AdagradOptions(Section):
    lr_decay: Annotated[float, Field(ge=0.0)] = 0.0  # lr / (1 + (t-1) * lr_decay)
    initial_accumulator_value: Annotated[float, Field(ge=0.0)] = 0.0


class RMSpropOptions(Section):
    alpha: Beta = 0.99  # decay of the running mean of squared gradients
    centered: bool = False  # divide by the variance estimate (subtract the mean gradient squared)
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0


class LambOptions(Section):
    bias_correction: bool = True  # Adam's bias correction of m and v (the paper's Algorithm 2 has it)
    max_trust_ratio: Annotated[float, Field(gt=0.0)] | None = None  # clip phi(||w||)/||r||; None: no clip


class LarsOptions(Section):
    trust_coefficient: Annotated[float, Field(gt=0.0)] = 0.001  # eta in the paper
    eps: Annotated[float, Field(ge=0.0)] = 0.0  # added to the denominator of the trust ratio
    # Groups without weight decay (biases, norms, embeddings) are not adapted by default (You et
    # al. 2017 and the MLPerf reference skip them): they take plain momentum steps.
    adapt_no_decay: bool = False


class LionOptions(Section):
    # The paper's defaults (Chen et al. 2023): beta1 interpolates the update, beta2 tracks momentum.
    betas: Annotated[list[Beta], Field(min_length=2, max_length=2)] = [0.9, 0.99]


class MuonOptions(Section):
    momentum: Beta = 0.95
    nesterov: bool = True
    ns_steps: Annotated[int, Field(gt=0, le=100)] = 5  # Newton-Schulz iterations (beyond ~10 gain nothing)
    # "match_rms_adamw" (Moonlight) scales each update to AdamW's RMS so that one lr serves both the
    # Muon matrices and the AdamW parameters; "original" is Keller Jordan's sqrt(max(1, rows/cols)).
    adjust_lr_fn: Literal["original", "match_rms_adamw"] = "match_rms_adamw"
    adamw_lr_ratio: Annotated[float, Field(gt=0.0)] = 1.0  # lr of the AdamW part = lr * this


class AdafactorOptions(Section):
    beta2_decay: Annotated[float, Field(le=0.0)] = -0.8  # beta2_t = 1 - t^beta2_decay
    eps1: Annotated[float, Field(gt=0.0)] | None = None  # None: torch's finfo(dtype).eps
    eps2: Annotated[float, Field(gt=0.0)] = 1e-3  # relative step floor: lr * max(eps2, RMS(w))
    d: Annotated[float, Field(gt=0.0)] = 1.0  # update clipping threshold


class AdamW8bitOptions(Section):
    # Tensors with fewer elements keep 32-bit states (bitsandbytes' default): quantising a bias
    # saves nothing and costs a block's absmax.
    min_8bit_size: NonNegInt = 4096


class OptimConfig(Section):
    """The optimizer. Shared hyperparameters at the top; each optimizer's own ones in a section
    named after it (`optim.lion.betas`, `optim.muon.ns_steps`...), read only by that optimizer.
    docs/optimizers.md lists which top-level keys each optimizer uses."""

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
    adagrad: AdagradOptions = AdagradOptions()
    rmsprop: RMSpropOptions = RMSpropOptions()
    lamb: LambOptions = LambOptions()
    lars: LarsOptions = LarsOptions()
    lion: LionOptions = LionOptions()
    muon: MuonOptions = MuonOptions()
    adafactor: AdafactorOptions = AdafactorOptions()
    adamw8bit: AdamW8bitOptions = AdamW8bitOptions()

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name in BUILTIN_OPTIMIZERS:  # answered without importing torch: errors come at once
            return name
        from scaletrain.optim.registry import available  # optimizers registered by the user

        if name not in available():
            raise ValueError(f"unknown optimizer {name!r} (known: {', '.join(available())})")
        return name

    @model_validator(mode="after")
    def _scaling_needs_reference(self) -> "OptimConfig":
        if self.lr_scaling != "none" and self.reference_batch is None:
            raise ValueError(
                f"optim.reference_batch: required with optim.lr_scaling={self.lr_scaling} (the global "
                "batch at which optim.lr was tuned)"
            )
        return self


class ScheduleConfig(Section):
    """The learning rate as a pure function of the step: base lr x multiplier(step)."""

    name: Literal["constant", "cosine", "linear", "wsd", "inverse_sqrt"] = "cosine"
    warmup_steps: Annotated[int, Field(ge=0, le=MAX_STEPS)] = 0
    min_lr_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    decay_fraction: Fraction = 0.2  # wsd: the share of steps spent cooling down
    cooldown: Literal["linear", "1-sqrt"] = "linear"


Steps = Annotated[int, Field(ge=0, le=MAX_STEPS)]
Batch = Annotated[int, Field(gt=0, le=MAX_BATCH)]


class TrainConfig(Section):
    max_steps: Annotated[int, Field(gt=0, le=MAX_STEPS)] = 1000
    batch_size: Batch = 32  # micro-batch per rank
    grad_accum: Annotated[int, Field(gt=0, le=MAX_GRAD_ACCUM)] = 1
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    grad_clip: Annotated[float, Field(ge=0.0)] = 1.0  # 0 turns clipping off
    eval_every: Steps = 200  # 0: only at the end
    eval_batches: Annotated[int, Field(gt=0, le=MAX_STEPS)] = 20
    final_eval_batches: Steps = 0  # 0: the whole validation split
    eval_batch_size: Batch | None = None  # None: train.batch_size (evaluation keeps no activations)
    seed: Annotated[int, Field(ge=0, lt=INT64)] = 1337  # torch.manual_seed takes any int64
    run_dir: str | None = None  # None: runs/<name>-<timestamp>
    resume: Union[Literal[False, "auto"], str] = False  # or the path of a checkpoint or run folder
    checkpoint_every: Steps = 0  # 0: only at the end
    early_stopping: Union[Literal[False], PositiveInt] = False  # or the patience, in evaluations
    device: Literal["cpu", "cuda"] | None = None  # None: cuda when available
    threads: Annotated[int, Field(gt=0, le=MAX_THREADS)] | None = None  # intra-op threads; None: torch's default
    compile: bool = False
    max_minutes: Annotated[float, Field(gt=0.0)] | None = None  # a wall-clock guard, checked per step

    _run_dir_home = field_validator("run_dir")(_expandable)

    @field_validator("early_stopping", mode="before")
    @classmethod
    def _zero_is_not_false(cls, value: object) -> object:
        if value == 0 and value is not False:  # 0 == False in Python: a patience of 0 is a typo
            raise ValueError("train.early_stopping: expected false or a patience >= 1 (got 0)")
        return value

    @field_validator("resume", mode="before")
    @classmethod
    def _true_means_auto(cls, value: object) -> object:
        return "auto" if value is True else value

    @field_validator("resume")
    @classmethod
    def _resume_path(cls, value: object) -> object:
        if value not in (False, "auto") and not _exists(str(value)):
            raise ValueError(f"checkpoint {brief(value)} does not exist (use false, auto or a path)")
        return value


class ParallelConfig(Section):
    """How training is spread over processes (`torchrun` ranks); see docs/parallel.md."""

    # single: one process. ddp: replicate, all-reduce gradients. zero1: ddp + optimizer state
    # sharded (ZeroRedundancyOptimizer). fsdp: FSDP2 fully_shard (parameters, gradients and
    # optimizer state sharded). tp: tensor parallel (attention heads and MLP split over ranks).
    # fsdp+tp: a 2-D mesh (dp x tp). pp: pipeline stages over GPT blocks.
    strategy: Literal["single", "ddp", "zero1", "fsdp", "tp", "fsdp+tp", "pp"] = "single"
    nproc: Annotated[int, Field(gt=0, le=MAX_PROCS)] = 1  # processes per node; > 1: `scaletrain train` starts torchrun
    # More processes than this machine's CPU cores (or CUDA devices) are refused at launch unless this
    # is true (oversubscribed ranks crawl, and CUDA ranks beyond the devices cannot start).
    oversubscribe: bool = False
    nnodes: Annotated[int, Field(gt=0, le=MAX_NODES)] = 1  # > 1: every node runs the same command with parallel.rdzv_endpoint
    rdzv_endpoint: str | None = None  # host:port of the c10d rendezvous (multi-node)
    tp_size: NonNegInt = 0  # ranks per tensor-parallel group; 0: all ranks (tp) or 2 (fsdp+tp)
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
        if self.strategy == "single" and self.nproc * self.nnodes > 1:
            raise ValueError(f"parallel.strategy: nproc {self.nproc} x nnodes {self.nnodes} processes need "
                             "a parallel strategy (ddp, zero1, fsdp, tp, fsdp+tp or pp), not single")
        return self


class GuardConfig(Section):
    """What the trainer does with a bad step: a NaN/Inf loss or gradient norm, or a loss spike."""

    # skip: drop the step's update and go on; rollback: reload the last checkpoint and continue
    # with the learning rate times lr_factor; stop: end the run (stopped_by=non_finite_loss);
    # off: no check (saves one host sync per step; a NaN is then only seen at the next log line).
    action: Literal["skip", "rollback", "stop", "off"] = "skip"
    spike_factor: Annotated[float, Field(gt=1.0)] | None = None  # loss > factor x recent mean is bad
    lr_factor: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5  # rollback: lr multiplied by this
    max_consecutive: PositiveInt = 5  # more bad steps in a row than this ends the run

    @field_validator("action", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        return "off" if value is False else value  # YAML reads a bare `off` as false


class CheckpointConfig(Section):
    keep_last: PositiveInt = 2


class LogConfig(Section):
    every: Annotated[int, Field(gt=0, le=MAX_STEPS)] = 10
    tensorboard: bool = True
    progress: bool = True
    sample_tokens: Annotated[int, Field(ge=0, le=MAX_SAMPLE_TOKENS)] = 200  # the report's sample (GPT only)
    sample_prompt: str = "def "

    @model_validator(mode="after")
    def _prompt_to_continue(self) -> "LogConfig":
        if self.sample_tokens and not self.sample_prompt:
            raise ValueError("log.sample_prompt: empty; the end-of-run sample continues a prompt "
                             "(give one, or set log.sample_tokens=0 for no sample)")
        return self


class Config(Section):
    """The root: it only composes the sections."""

    name: str = "run"  # used for the default run folder name
    data: DataConfig = DataConfig()
    model: ModelConfig = GPTConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    parallel: ParallelConfig = ParallelConfig()
    guard: GuardConfig = GuardConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    log: LogConfig = LogConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        if self.model.name == "gpt" and self.data.kind != "text":
            raise ValueError("model.name=gpt needs data.kind=text")
        if self.model.name == "mlp" and self.data.kind != "images":
            raise ValueError("model.name=mlp needs data.kind=images")
        sharded = self.parallel.strategy in ("fsdp", "tp", "fsdp+tp")
        if sharded and self.optim.name in _NEEDS_PLAIN_TENSORS:
            raise ValueError(f"optim.name: {self.optim.name} does not run on sharded (DTensor) parameters "
                             f"({_NEEDS_PLAIN_TENSORS[self.optim.name]}); with parallel.strategy="
                             f"{self.parallel.strategy} choose another optimizer, or use ddp/zero1/pp")
        if self.schedule.warmup_steps >= self.train.max_steps and self.schedule.warmup_steps > 0:
            raise ValueError(
                f"schedule.warmup_steps: {self.schedule.warmup_steps} must be below "
                f"train.max_steps ({self.train.max_steps})"
            )
        if self.data.kind == "text":
            for key in ("batch_size", "eval_batch_size"):
                batch = getattr(self.train, key)
                if batch is not None and batch * self.data.seq_len > MAX_BATCH_TOKENS:
                    raise ValueError(f"train.{key}: {batch} x data.seq_len {self.data.seq_len} tokens per "
                                     f"micro-batch is more than {MAX_BATCH_TOKENS:,}; lower one of them")
        return self

    @model_validator(mode="after")
    def _fits_this_machine(self, info: ValidationInfo) -> "Config":
        """Only where processes start here (`load_config(..., this_machine=True)`): a finished run's
        config.yaml read on a smaller machine (eval, generate, compress, plan) stays valid."""
        p = self.parallel
        if not (info.context or {}).get("this_machine") or p.oversubscribe or p.nproc == 1:
            return self
        count, what = _cuda_devices(self.train.device), "CUDA devices"
        if not count:
            count, what = _usable_cores(), "CPU cores"
        if p.nproc > count:
            raise ValueError(f"parallel.nproc: {p.nproc} processes but this machine has {count} {what}; "
                             "lower parallel.nproc, or set parallel.oversubscribe=true to start them anyway")
        return self


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may run on (taskset, cpusets)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cuda_devices(device: str | None) -> int:
    """CUDA devices a run on `train.device` would use: 0 for a CPU run."""
    if device == "cpu":
        return 0
    import torch  # only here: a launch of several processes imports torch next anyway

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
