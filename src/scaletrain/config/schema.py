"""Typed configuration: one small section per component, composed by `Config`.

Every section forbids unknown keys and checks types strictly (no silent "3" -> 3), so a typo or a
wrong value is reported by name before any work starts. The YAML presets in `configs/` and the
`section.key=value` overrides of the CLI both go through these models; nothing else reads settings.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from scaletrain.models import FAMILIES, model_configs
from scaletrain.optim.config import OptimConfig
from scaletrain.optim.registry import OPTIMIZERS
from scaletrain.parallel.config import ParallelConfig
from scaletrain.sections import (  # noqa: F401  (the bounds are the config's; the CLI reads them here)
    INT64, MAX_BATCH, MAX_BATCH_TOKENS, MAX_FF, MAX_GRAD_ACCUM, MAX_LAYERS, MAX_NODES, MAX_PROCS,
    MAX_SAMPLE_TOKENS, MAX_SEQ_LEN, MAX_STEPS, MAX_THREADS, MAX_TIMEOUT, MAX_VOCAB, MAX_WIDTH, Fraction,
    NonNegInt, PositiveInt, Section, brief,
)

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


UnitInterval = Annotated[float, Field(ge=0.0, le=1.0)]


class CleanConfig(Section):
    """Document cleaning, the same for `scaletrain prepare` and `train`'s `data.clean`: Unicode
    normalization, then optional quality filters (None: off)."""

    normalize: Literal["NFC", "NFKC", "none"] = "NFC"
    min_chars: NonNegInt | None = None
    max_chars: PositiveInt | None = None
    max_line_chars: PositiveInt | None = None
    max_non_alnum_fraction: UnitInterval | None = None
    max_repeated_line_fraction: UnitInterval | None = None


class DedupConfig(Section):
    """Exact (XXH3-128) and near (MinHash LSH) duplicate removal, the same for `scaletrain prepare`
    and `train`'s `data.dedup`."""

    exact: bool = True
    near: bool = True
    bands: Annotated[int, Field(ge=1, le=256)] = 14
    rows: Annotated[int, Field(ge=1, le=64)] = 8
    ngram: Annotated[int, Field(ge=1, le=32)] = 5  # words per shingle
    # A candidate pair counts as a duplicate when its estimated Jaccard reaches this;
    # None: the LSH threshold (1/bands)^(1/rows).
    threshold: UnitInterval | None = None
    partitions: Annotated[int, Field(ge=1, le=4096)] = 16  # hash partitions of the local engine (memory / partitions)
    seed: int = 0


class DataConfig(Section):
    """Where the training data comes from and how it is cut into samples."""

    kind: Literal["text", "images"] = "text"
    # text: a file or directory of text, JSONL (also compressed) or Parquet (None = the embedded
    # stdlib corpus), prepared by the same pipeline as `scaletrain prepare`;
    # images: a directory of MNIST IDX files (None = the shipped 8x8 digits, UCI optdigits).
    path: str | None = None
    pattern: str = "**/*.txt"  # which files of a directory `path` are read (text only)
    format: Literal["auto", "text", "jsonl", "parquet"] = "auto"  # auto: by the pattern's or file's extension
    field: str = "text"  # JSONL key / Parquet column holding each document
    clean: CleanConfig = CleanConfig()
    dedup: DedupConfig = DedupConfig()
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
        if self.path is not None and not _exists(self.path, "dir" if self.kind == "images" else "any"):
            raise ValueError(f"data.path: {'directory ' if self.kind == 'images' else ''}{brief(self.path)} "
                             "does not exist")
        if self.mixture is not None:
            if self.kind != "text" or self.path is not None:
                raise ValueError("data.mixture: mixes prepared text directories; it replaces data.path "
                                 "(leave data.path unset) and needs data.kind=text")
            if not self.mixture:
                raise ValueError("data.mixture: an empty list; give at least one {path, weight}")
        return self


# The `model:` section: one of the registered families' sections, chosen by `model.name`.
ModelConfig = Annotated[Union[model_configs()], Field(discriminator="name")]
# What each kind of family learns from (a family's section says its task).
DATA_KIND = {"language_modeling": "text", "classification": "images"}


class ScheduleConfig(Section):
    """The learning rate as a pure function of the step: base lr x multiplier(step)."""

    name: Literal["constant", "cosine", "linear", "wsd", "inverse_sqrt"] = "cosine"
    warmup_steps: Annotated[int, Field(ge=0, le=MAX_STEPS)] = 0
    min_lr_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    decay_fraction: Fraction = 0.2  # wsd: the share of steps spent cooling down
    cooldown: Literal["linear", "1-sqrt"] = "linear"
    # steps: the schedule spans train.max_steps. time: it spans train.max_minutes: the step count
    # is fitted from the first steps' measured time (train/budget.py), at most train.max_steps.
    budget: Literal["steps", "time"] = "steps"


Steps = Annotated[int, Field(ge=0, le=MAX_STEPS)]
Batch = Annotated[int, Field(gt=0, le=MAX_BATCH)]


class TrainConfig(Section):
    max_steps: Annotated[int, Field(gt=0, le=MAX_STEPS)] = 1000
    batch_size: Batch = 32  # micro-batch per rank
    grad_accum: Annotated[int, Field(gt=0, le=MAX_GRAD_ACCUM)] = 1
    # auto: bf16 where the device has it natively (CUDA with bf16; a CPU with AVX512-BF16 or AMX
    # whose measured bf16 matmuls beat fp32), fp32 elsewhere; the choice and why go in the log and
    # summary.json (hardware.choose_precision).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
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
    # A wall-clock guard, checked per step; with schedule.budget=time also the budget the step count is fitted to.
    max_minutes: Annotated[float, Field(gt=0.0)] | None = None
    # An exponential moving average of the weights, updated after every step and saved beside the
    # final ones (model_ema.safetensors); its state is in the checkpoints. None: no EMA.
    ema_decay: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None

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
    # Write checkpoints in a background thread while training goes on (DCP async_save): the state is
    # copied to CPU memory at the step (one more copy of the model and optimizer state there), and
    # the checkpoint appears in checkpoints/ once written, at the next save or the end of the run.
    async_save: bool = False


# Where the metrics go besides metrics.jsonl (always written): name -> (package, extra) it needs
# beyond the core (None: in the core). Each gets the config, the metrics and the final summary.
TRACKERS = {"tensorboard": None, "mlflow": ("mlflow", "trackers"), "wandb": ("wandb", "trackers"),
            "trackio": ("trackio", "trackers")}
Tracker = Literal["tensorboard", "mlflow", "wandb", "trackio"]


class LogConfig(Section):
    every: Annotated[int, Field(gt=0, le=MAX_STEPS)] = 10
    # true: a live bar where stderr is a terminal, and plain step lines every log.every steps
    # where it is not (nohup, SLURM, CI, a pipe); false: plain step lines everywhere.
    progress: bool = True
    trackers: list[Tracker] = ["tensorboard"]  # [] for none; rank 0 logs to each
    project: Annotated[str, Field(min_length=1, max_length=128)] = "scaletrain"  # MLflow experiment, W&B/trackio project
    sample_tokens: Annotated[int, Field(ge=0, le=MAX_SAMPLE_TOKENS)] = 200  # the report's sample (GPT only)
    sample_prompt: str = "def "

    @model_validator(mode="before")
    @classmethod
    def _tensorboard_switch(cls, data: object) -> object:
        """`log.tensorboard: false|true` (configs written before log.trackers): drops TensorBoard
        from log.trackers, or adds it."""
        if isinstance(data, dict) and "tensorboard" in data:
            data = dict(data)
            on = data.pop("tensorboard")
            if not isinstance(on, bool):
                raise ValueError(f"log.tensorboard: expected true or false (got {brief(on)})")
            trackers = data.get("trackers", ["tensorboard"])
            if isinstance(trackers, list):
                trackers = [t for t in trackers if t != "tensorboard"]
                data["trackers"] = (["tensorboard"] + trackers) if on else trackers
        return data

    @field_validator("trackers")
    @classmethod
    def _once_each(cls, trackers: list[str]) -> list[str]:
        twice = sorted({t for t in trackers if trackers.count(t) > 1})
        if twice:
            raise ValueError(f"log.trackers: {twice[0]} is listed twice")
        return trackers

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
    model: ModelConfig = FAMILIES["gpt"].config()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    parallel: ParallelConfig = ParallelConfig()
    guard: GuardConfig = GuardConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    log: LogConfig = LogConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        kind = DATA_KIND[type(self.model).task]
        if self.data.kind != kind:
            raise ValueError(f"model.name={self.model.name} needs data.kind={kind}")
        why, dims = OPTIMIZERS[self.optim.name].sharded, self.parallel.dims()
        layouts = getattr(type(self.model), "layouts", None)  # a family that only some layouts split
        if layouts is not None and dims.strategy not in layouts:
            raise ValueError(f"parallel.strategy: {dims.strategy} is not available for model.name={self.model.name} "
                             f"(it trains with {', '.join(layouts)}: no tensor-parallel plan or pipeline stages)")
        if self.data.document_mask and not getattr(type(self.model), "document_mask", True):
            raise ValueError(f"data.document_mask: model.name={self.model.name} has no packed-document "
                             "attention masks; set data.document_mask=false")
        if why and dims.sharded_params:
            raise ValueError(f"optim.name: {self.optim.name} does not run on sharded (DTensor) parameters "
                             f"({why}); with parallel.strategy={dims.strategy} choose another optimizer, "
                             "or use ddp, zero1, pp or pp+ddp")
        if self.schedule.warmup_steps >= self.train.max_steps and self.schedule.warmup_steps > 0:
            raise ValueError(
                f"schedule.warmup_steps: {self.schedule.warmup_steps} must be below "
                f"train.max_steps ({self.train.max_steps})"
            )
        if self.schedule.budget == "time" and not self.train.max_minutes:
            raise ValueError("schedule.budget=time needs train.max_minutes (the budget the step count is "
                             "fitted to); set it, or use schedule.budget=steps")
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
        if not (info.context or {}).get("this_machine"):
            return self
        self._extras_installed()
        if p.oversubscribe or p.nproc == 1:
            return self
        count, what = _cuda_devices(self.train.device), "CUDA devices"
        if not count:
            count, what = _usable_cores(), "CPU cores"
        if p.nproc > count:
            raise ValueError(f"parallel.nproc: {p.nproc} processes but this machine has {count} {what}; "
                             "lower parallel.nproc, or set parallel.oversubscribe=true to start them anyway")
        return self


    def _extras_installed(self) -> None:
        """The optional packages this run imports (an optimizer's, the trackers'), looked for
        without importing them: a missing one is refused before any work starts."""
        from scaletrain.extras import missing

        needs = [(OPTIMIZERS[self.optim.name].needs, f"optim.name={self.optim.name}")]
        needs += [(TRACKERS[t], f"log.trackers={t}") for t in self.log.trackers]
        for need, what in needs:
            problem = need and missing(need[0], need[1], what)
            if problem:
                raise ValueError(problem)


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
