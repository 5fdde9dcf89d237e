"""Typed configuration: one small section per component, composed by `Config`.

Every section forbids unknown keys and checks types strictly (no silent "3" -> 3), so a typo or a
wrong value is reported by name before any work starts. The YAML presets in `configs/` and the
`section.key=value` overrides of the CLI both go through these models; nothing else reads settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class MixtureSource(Section):
    """One prepared directory (`scaletrain prepare --out DIR`) of a data mixture."""

    path: str
    weight: Annotated[float, Field(gt=0.0)] = 1.0

    @field_validator("path")
    @classmethod
    def _prepared(cls, path: str) -> str:
        if not (Path(path).expanduser() / "manifest.json").is_file():
            raise ValueError(f"data.mixture: {path!r} is not a prepared directory (no manifest.json)")
        return path


class DataConfig(Section):
    """Where the training data comes from and how it is cut into samples."""

    kind: Literal["text", "images"] = "text"
    # text: a directory of text files (None = the embedded stdlib corpus);
    # images: a directory of MNIST IDX files (None = scikit-learn's embedded digits).
    path: str | None = None
    pattern: str = "**/*.txt"  # which files of `path` are read (text only)
    vocab_size: Annotated[int, Field(ge=258, le=2**31 - 1)] = 8192  # 256 bytes + end-of-text + merges
    seq_len: PositiveInt = 256
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05  # by file for text, stratified for images
    train_fraction: Fraction = 1.0  # a deterministic subset of the training samples
    max_bytes: PositiveInt | None = None  # a deterministic subset of the corpus files, for quick runs
    standardize: bool = True  # images: z-score each input feature with training-split statistics
    cache_dir: str = "~/.cache/scaletrain/data"
    # text: inputs become {"idx", "doc_ids"} so attention stays inside each packed document
    document_mask: bool = False
    # text: train on several `scaletrain prepare` directories mixed by weight (instead of data.path)
    mixture: list[MixtureSource] | None = None

    @model_validator(mode="after")
    def _path_exists(self) -> "DataConfig":
        if self.path is not None and not Path(self.path).expanduser().is_dir():
            raise ValueError(f"data.path: directory {self.path!r} does not exist")
        if self.mixture is not None:
            if self.kind != "text" or self.path is not None:
                raise ValueError("data.mixture: mixes prepared text directories; it replaces data.path "
                                 "(leave data.path unset) and needs data.kind=text")
            if not self.mixture:
                raise ValueError("data.mixture: an empty list; give at least one {path, weight}")
        return self


class GPTConfig(Section):
    name: Literal["gpt"] = "gpt"
    n_layer: PositiveInt = 4
    n_head: PositiveInt = 4
    d_model: PositiveInt = 256
    d_ff: PositiveInt | None = None  # default 4 * d_model
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
    hidden: list[PositiveInt] = [128, 64]
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
    ns_steps: PositiveInt = 5  # Newton-Schulz iterations that orthogonalise the update
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
    warmup_steps: NonNegInt = 0
    min_lr_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    decay_fraction: Fraction = 0.2  # wsd: the share of steps spent cooling down
    cooldown: Literal["linear", "1-sqrt"] = "linear"


class TrainConfig(Section):
    max_steps: PositiveInt = 1000
    batch_size: PositiveInt = 32  # micro-batch per rank
    grad_accum: PositiveInt = 1
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    grad_clip: Annotated[float, Field(ge=0.0)] = 1.0  # 0 turns clipping off
    eval_every: NonNegInt = 200  # 0: only at the end
    eval_batches: PositiveInt = 20
    final_eval_batches: NonNegInt = 0  # 0: the whole validation split
    eval_batch_size: PositiveInt | None = None  # None: train.batch_size (evaluation keeps no activations)
    seed: int = 1337
    run_dir: str | None = None  # None: runs/<name>-<timestamp>
    resume: Union[Literal[False, "auto"], str] = False  # or the path of a checkpoint or run folder
    checkpoint_every: NonNegInt = 0  # 0: only at the end
    early_stopping: Union[Literal[False], PositiveInt] = False  # or the patience, in evaluations
    device: Literal["cpu", "cuda"] | None = None  # None: cuda when available
    threads: PositiveInt | None = None  # torch intra-op threads; None keeps torch's default
    compile: bool = False
    max_minutes: Annotated[float, Field(gt=0.0)] | None = None  # a wall-clock guard, checked per step

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
        if value not in (False, "auto") and not Path(str(value)).expanduser().exists():
            raise ValueError(f"checkpoint {value!r} does not exist (use false, auto or a path)")
        return value


class ParallelConfig(Section):
    """How training is spread over processes (`torchrun` ranks); see docs/parallel.md."""

    # single: one process. ddp: replicate, all-reduce gradients. zero1: ddp + optimizer state
    # sharded (ZeroRedundancyOptimizer). fsdp: FSDP2 fully_shard (parameters, gradients and
    # optimizer state sharded). tp: tensor parallel (attention heads and MLP split over ranks).
    # fsdp+tp: a 2-D mesh (dp x tp). pp: pipeline stages over GPT blocks.
    strategy: Literal["single", "ddp", "zero1", "fsdp", "tp", "fsdp+tp", "pp"] = "single"
    nproc: PositiveInt = 1  # processes per node; > 1 makes `scaletrain train` start torchrun
    nnodes: PositiveInt = 1  # > 1: every node runs the same command with parallel.rdzv_endpoint
    rdzv_endpoint: str | None = None  # host:port of the c10d rendezvous (multi-node)
    tp_size: NonNegInt = 0  # ranks per tensor-parallel group; 0: all ranks (tp) or 2 (fsdp+tp)
    reshard_after_forward: bool = True  # fsdp: True = ZeRO-3, False = ZeRO-2 (keep params gathered)
    cpu_offload: bool = False  # fsdp: parameters, gradients and optimizer state live on the CPU
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    pp_schedule: Literal["gpipe", "1f1b"] = "1f1b"
    pp_microbatches: PositiveInt = 2  # pp: the step's batch is split into this many micro-batches
    max_restarts: NonNegInt = 0  # torchrun restarts the group this often after a rank dies
    timeout_seconds: Annotated[float, Field(gt=0.0)] = 300.0  # a collective waiting longer fails
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
    every: PositiveInt = 10
    tensorboard: bool = True
    progress: bool = True
    sample_tokens: NonNegInt = 200  # length of the generated sample in the report (GPT only)
    sample_prompt: str = "def "


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
        return self
