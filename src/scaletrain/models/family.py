"""What a model family tells the rest of scaletrain: the contract of a `models/<family>/` folder.

A family is a plain `nn.Module` (no `torch.distributed` in it) plus three things the core asks
for, so that nothing outside the family's folder knows its module names:

- `ParallelPlan`: its repeated blocks (the units of activation checkpointing, FSDP and pipeline
  stages), its tensor-parallel plan (sub-module name inside a block -> "colwise" / "rowwise"), how
  to cut it into pipeline stages, and which parameter (if any) ties the embedding to the head;
- `ModelSpec`: what `scaletrain plan` needs to predict memory and time (parameters, FLOPs per token,
  activation bytes), computed from the family's own arithmetic;
- the config section of `model:` in a YAML file (a small pydantic model whose `name` is a
  Literal of the family's name, and whose class attribute `task` says what data it learns from),
  and how a config plus the data's shape become the module's args;
- optionally `HFMapping`: how its weights and config map to a Hugging Face `transformers`
  architecture (`model.init_from=DIR` reads them, `scaletrain export --format hf` writes them).

A family folder holds:

- `config.py`: the `model:` section. No torch here (nor in the folder's `__init__.py`): the config
  is validated before torch is imported, so that bad input is reported at once;
- `family.py`: `FAMILY = ModelFamily(...)`, built from the folder's other modules (the module, its
  parallel plan, its spec).

Adding a family: such a folder, and one line in `models/__init__.py`'s registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:  # annotations only: this contract is read without importing torch
    from torch import nn

TPStyle = Literal["colwise", "rowwise"]  # what scaletrain.parallel.parallelize.apply_tp applies
Task = Literal["language_modeling", "classification"]


@dataclass(frozen=True)
class DataShape:
    """What the data decides about a model: vocabulary and context (text) or features and classes."""

    vocab_size: int | None = None
    seq_len: int | None = None
    input_dim: int | None = None
    num_classes: int | None = None


def _no_tied_parameter(model: nn.Module) -> None:
    return None


@dataclass(frozen=True)
class ParallelPlan:
    """How the core may split a family's module. Every callable takes the plain model."""

    # The repeated units (an nn.ModuleList): activation checkpointing, FSDP units, pipeline stages.
    blocks: Callable[[nn.Module], nn.ModuleList]
    # Tensor parallel, per block: sub-module name (relative to a block) -> style. Empty: no TP.
    tp_plan: dict[str, TPStyle] = field(default_factory=dict)
    # Raises UserError naming the key when `tp` ranks cannot split the model (heads, widths).
    check_tp: Callable[[nn.Module, int], None] | None = None
    # A module holding blocks[layers] under the same names as the full model (`blocks.3`), plus
    # what comes before the blocks on the first stage and after them on the last; called as
    # pipeline_stage(model, layers, first, last). Its forward takes the token ids (first stage) or
    # the previous stage's output, and returns the next stage's input or the logits. None: no pp.
    pipeline_stage: Callable[[nn.Module, range, bool, bool], nn.Module] | None = None
    # The parameter shared by the embedding and the head (its gradient is summed across the first
    # and last pipeline stages), or None. (Which stage trains a parameter the core finds by building
    # every stage: the stages hold the model's own modules.)
    tied_parameter: Callable[[nn.Module], nn.Parameter | None] = _no_tied_parameter


class ModelSpec(Protocol):
    """Arithmetic of one model instance, for `scaletrain plan` (docs/plan.md derives each term)."""

    kind: str  # the family's name
    params: int
    block_params: int  # one repeated block (0 when the family has none)
    n_layer: int  # repeated blocks (0: none; activation checkpointing is then not offered)
    tp_params: int  # the weights tensor parallel shards (all blocks)
    matmul_params: int  # weights used in matmuls (autocast keeps a bf16 copy of each)
    flops_per_unit: float  # training FLOPs per token (language models) or sample (classifiers)
    units_per_sample: int  # seq_len for a language model, 1 for a classifier
    hidden: int  # the residual width (the size of one TP all-reduce per token)

    def supports_tp(self, tp: int) -> bool:
        """Whether `tp` ranks can split it (always False for a family without a TP plan)."""
        ...

    def activation_bytes(self, micro: int, precision: str, ac: bool, tp: int = 1) -> tuple[float, float]:
        """(saved for backward, transient peak on top) of one micro-batch, bytes per rank."""
        ...

    # Optional: `attention_shape` (query heads, key/value heads, head dim) in the spec of a family
    # whose blocks call scaletrain.models.attention.causal_attention: plan adds what its bf16 CPU
    # form keeps (models.attention.explicit_attention_bytes).


@dataclass(frozen=True)
class HFMapping:
    """A family's names in `transformers` (`<family>/hf.py`), both ways. Pure functions of dicts and
    tensors: reading and writing the files is the caller's (scaletrain.untrusted, scaletrain.export)."""

    # The `architectures` of a config.json this family reads ("LlamaForCausalLM").
    architectures: tuple[str, ...]
    # (config.json, data shape) -> the module's args; a UserError naming the key that does not fit.
    args_from_hf: Callable[[dict, DataShape], dict]
    # (module args, config.json) -> [TensorMap] (scaletrain.models.hfmap): one entry per tensor.
    tensors: Callable[[dict, dict], list]
    # (module args, the config.json the run started from or None) -> the config.json to write;
    # a UserError when the architecture cannot hold the model (per-layer widths, another norm).
    config_to_hf: Callable[[dict, dict | None], dict]
    # Regular expressions of tensor names a checkpoint may hold that are no weights (old buffers).
    ignored: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelFamily:
    name: str
    config: type  # the pydantic section for `model:` (its `name` field: Literal[name]; class attribute `task`)
    module: type[nn.Module]  # has `from_args_dict(dict)` and `args_dict()`
    # (model section, data shape) -> the module's args dict (what model_config.json records)
    args_from_config: Callable[[object, DataShape], dict]
    # A model instance (often on the meta device) -> its ModelSpec
    spec: Callable[[nn.Module], ModelSpec]
    plan: ParallelPlan | None = None  # None: only data-parallel layouts (ddp, zero1, fsdp of the root)
    hf: HFMapping | None = None  # None: no `transformers` counterpart (no init_from, no export to hf)

    @property
    def task(self) -> Task:
        """What the family learns (the config section's class attribute, readable without torch)."""
        return self.config.task
