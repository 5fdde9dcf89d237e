"""One optimizer step, written out, for every layout and every caller (the trainer, `profile`,
`verify` through the trainer):

    loss = forward_backward(micro-batches)          # gradients accumulated over the micro-batches
    norm = layout.grad_norm(params)                  # the global norm, whatever shards the gradients
    verdict = guard(loss, norm)                      # drop a NaN/Inf or spiking step's update
    layout.clip(params, grad_clip, norm); optimizer.step(); gradients dropped

`forward_backward` is the layout's: the plain loop below (`plain_forward_backward`), or a
pipeline schedule (scaletrain.parallel.pipeline). `phase(name)` brackets the forward, backward
and optimizer parts: a shared no-op in training, a profiler range in `scaletrain profile`.
`make_train_step` binds what is fixed for a run once; `train_step` is one step of it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from scaletrain.parallel.layout import Layout, autocast_context  # noqa: F401  (autocast_context: its users import it here)

_NO_PHASE = nullcontext()


def no_phase(name: str) -> AbstractContextManager:
    return _NO_PHASE


def micro_batches(position: int, batch: int, accum: int, dp_world: int, dp_rank: int,
                  samples: int | None = None) -> list[tuple[int, int]]:
    """(global position, size) of this rank's micro-batches for the step starting at `position`.

    The step reads the global batch position .. position + batch x accum x dp; micro-batch k of
    data-parallel rank r is the slice at k x (batch x dp) + r x batch. So the samples of a step,
    and their order, are the same for any number of ranks (the same global batch split
    differently), every rank gets equal work, and resuming needs only `position`. `samples`: the
    step covers exactly this many instead (full-batch gd: the training set), in as many
    micro-batches as it takes; the last ones may be short or empty."""
    stride = batch * dp_world
    if samples is None:
        return [(position + k * stride + dp_rank * batch, batch) for k in range(accum)]
    return [(position + k * stride + dp_rank * batch, max(0, min(batch, samples - k * stride - dp_rank * batch)))
            for k in range(-(-samples // stride))]


def to_device(x, device: torch.device):
    """A batch input is a tensor, or a dict of tensors (e.g. tokens plus document ids)."""
    if isinstance(x, dict):
        return {k: v.to(device, non_blocking=True) for k, v in x.items()}
    return x.to(device, non_blocking=True)


def forward(model: nn.Module, x):
    """The model's output for a batch input: `model(**x)` for a dict of tensors, else `model(x)`.
    Whatever the model returns (a tensor, a `transformers` ModelOutput, a dict) is passed on:
    the task's loss takes it (`logits_of` finds the logits in it)."""
    return model(**x) if isinstance(x, dict) else model(x)


def logits_of(output) -> torch.Tensor:
    """The logits in a model's output: the tensor itself, `output.logits` (a `transformers`
    ModelOutput) or `output["logits"]` (a dict)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model returned a {type(output).__name__} without logits: return a tensor, "
                        "an object with a `logits` tensor, or a dict with a 'logits' tensor (or give the "
                        "trainer a task whose loss reads this output)")
    return logits


_ONES: dict[torch.device, torch.Tensor] = {}


@torch.no_grad()
def nonfinite_gradients(grads: list[torch.Tensor]) -> torch.Tensor | None:
    """A one-element tensor, > 0 when some tensor in `grads` (gradients, and the step's loss) holds a
    NaN or Inf; None when the gradients are sharded (DTensor) or on several devices, where the
    caller falls back to the global norm.

    It is GradScaler's own fused check (`_amp_foreach_non_finite_check_and_unscale_`) with a scale
    of 1, an exact no-op on the values: one pass and no reduction, ~6x cheaper than a norm on a
    small model (10 vs 60 us for the MLP preset), where the guard's check is on every step.
    """
    if not grads or any(type(g) is not torch.Tensor for g in grads):
        return None
    device, dtype = grads[0].device, grads[0].dtype
    if any(g.device != device for g in grads):
        return None
    found = torch.zeros(1, device=device)
    one = _ONES.get(device)
    if one is None:
        one = _ONES[device] = torch.ones(1, device=device)  # read-only: the check's scale
    if all(g.dtype == dtype for g in grads):
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, one)
        return found
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:  # the fused kernel takes one dtype per call (bf16 parameters beside fp32 ones)
        by_dtype.setdefault(g.dtype, []).append(g)
    for same in by_dtype.values():
        torch._amp_foreach_non_finite_check_and_unscale_(same, found, one)
    return found


def bare_step(optimizer: torch.optim.Optimizer) -> Callable[[], object]:
    """`optimizer.step` for a run's steps: the optimizer's own step function, without the wrapper
    torch.optim puts around every `Optimizer` subclass's step (a profiler range named
    "Optimizer.step#<class>.step", the global and per-optimizer step hooks) while there is nothing
    for that wrapper to do: no profiler is recording and no step hook is registered. Otherwise,
    and for any optimizer whose step is not torch.optim's wrapper (or was replaced on the instance),
    the call is `optimizer.step()` itself. The update is the same either way: the same function
    runs on the same state.

    Why: the range is entered and left through `torch.ops` calls, and on a 1 ms step (the MLP
    preset) the wrapper cost ~3 % of the step in a scratch interleaved timing
    (benchmarks/overhead.py's harness)."""
    wrapper = type(optimizer).step
    inner = getattr(wrapper, "__wrapped__", None)
    try:
        from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks
    except ImportError:  # another torch: its wrapper may do other things
        return optimizer.step
    if (inner is None or not getattr(wrapper, "hooked", False) or "step" in vars(optimizer)
            or not hasattr(optimizer, "_optimizer_step_pre_hooks")):
        return optimizer.step
    profiling = torch.autograd._profiler_enabled

    def step():
        # Read every call: hooks can be registered, and a profiler started, in the middle of a run.
        if (optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
                or _global_optimizer_pre_hooks or _global_optimizer_post_hooks or profiling()):
            return optimizer.step()
        return inner(optimizer)

    return step


class NonfiniteCheck:
    """`nonfinite_gradients` for one run's steps, decided once: a run's gradients keep their type,
    device and dtype, so the first call checks them and later calls only zero one flag buffer and
    run the fused kernel (checking and allocating every step cost ~2 % of a 1.3 ms MLP step,
    measured interleaved). The returned flag is valid until the next call."""

    def __init__(self):
        self._fast: bool | None = None
        self._found = self._one = None

    def __call__(self, tensors: list[torch.Tensor]) -> torch.Tensor | None:
        if self._fast is None:
            first = tensors[0] if tensors else None
            self._fast = first is not None and all(
                type(t) is torch.Tensor and t.device == first.device and t.dtype == first.dtype
                for t in tensors)
            if self._fast:
                self._found = torch.zeros(1, device=first.device)
                self._one = torch.ones(1, device=first.device)
        if not self._fast:
            return nonfinite_gradients(tensors)
        # No torch.no_grad() around it (~2 us): gradients and the detached flag record no graph.
        self._found.zero_()
        torch._amp_foreach_non_finite_check_and_unscale_(tensors, self._found, self._one)
        return self._found


def plain_forward_backward(module: nn.Module, loss_fn, *, device: torch.device, autocast: AbstractContextManager,
                           grad_sync=None, scaler: torch.amp.GradScaler | None = None,
                           phase: Callable[[str], AbstractContextManager] = no_phase) -> Callable:
    """The forward_backward of every layout but pipelining: for each micro-batch (x, y), the loss
    under autocast and its backward; the gradient sync (`grad_sync(last)`, the layout's) only on
    the last one. Returns forward_backward(micro_batches, weights=None) -> the step's loss, where
    `weights` are each micro-batch's factor in it (default 1/len(micro_batches))."""
    # On the CPU a batch is where it trains already: a `.to()` per tensor is dispatch work only.
    move = device.type != "cpu"

    def forward_backward(batches, weights: list[float] | None = None) -> torch.Tensor:
        accum = len(batches)
        total = None
        for i, (x, y) in enumerate(batches):
            if move:
                x, y = to_device(x, device), y.to(device, non_blocking=True)
            with grad_sync(i == accum - 1) if grad_sync is not None else _NO_PHASE:
                with phase("forward"), autocast:
                    loss = loss_fn(forward(module, x), y)
                    if weights is not None:
                        loss = loss * weights[i]
                    elif accum > 1:
                        loss = loss / accum
                with phase("backward"):
                    (scaler.scale(loss) if scaler else loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        return total

    if grad_sync is not None or scaler is not None or phase is not no_phase:
        return forward_backward

    def one_batch(batches, weights: list[float] | None = None) -> torch.Tensor:
        """The common step, one micro-batch and nothing around it, without the loop's contexts
        (on a 1 ms step, the MLP preset's, every call between two steps shows: benchmarks/overhead.py)."""
        if len(batches) != 1 or weights is not None:
            return forward_backward(batches, weights)
        x, y = batches[0]
        if move:
            x, y = to_device(x, device), y.to(device, non_blocking=True)
        with autocast:
            loss = loss_fn(forward(module, x), y)
        loss.backward()
        return loss.detach()

    return one_batch


def make_train_step(forward_backward: Callable, optimizer: torch.optim.Optimizer, layout: Layout, *,
                    params: list[nn.Parameter], grad_clip: float, guard=None,
                    scaler: torch.amp.GradScaler | None = None, nonfinite_check=nonfinite_gradients,
                    phase: Callable[[str], AbstractContextManager] = no_phase) -> Callable:
    """A run's optimizer step: step(batches, weights=None, want_norm=True, before_zero_grad=None)
    over `batches` [(x, y), ...] -> (loss, grad norm or None, the guard's reason for dropping the
    update or None). Loss and norm stay tensors: nothing here calls `.item()`, so the host never
    waits on the device unless the guard asks. What is fixed for a run is bound here, once.

    `params`: the parameters this rank trains, listed once by the caller (walking the module tree
    every step costs more than a small model's optimizer step). With clipping off the norm is only
    computed when `want_norm` (a logging step) or when the guard needs it: on a small model it is a
    fifth of the step. `guard(loss, norm, nonfinite) -> reason | None` judges the step before the
    update; when no norm is wanted otherwise it gets `nonfinite` (see `nonfinite_gradients`, of the
    gradients and the loss) instead. `before_zero_grad` runs after the update, while the gradients
    still exist."""
    clipping, timed = grad_clip > 0, phase is not no_phase
    optimizer_step = bare_step(optimizer)

    def update(loss: torch.Tensor, want_norm: bool, before_zero_grad):
        if scaler is not None:
            scaler.unscale_(optimizer)
        grads_of = [p for p in params if p.grad is not None]
        norm = nonfinite = None
        if guard is not None and not (clipping or want_norm):
            nonfinite = nonfinite_check([p.grad for p in grads_of] + [loss])  # one flag for the host
        if clipping or want_norm or (guard is not None and nonfinite is None):
            norm = layout.grad_norm(grads_of)
        reason = guard(loss, norm, nonfinite) if guard is not None else None
        if reason is None:
            if clipping:
                layout.clip(grads_of, grad_clip, norm)
            if scaler is not None:
                scaler.step(optimizer)
            else:
                optimizer_step()
            if before_zero_grad is not None:
                before_zero_grad()
        if scaler is not None:
            scaler.update()
        # optimizer.zero_grad(set_to_none=True), without its profiler range and walk over the
        # groups (~2 % of a 1.1 ms MLP step in a scratch interleaved timing): the gradients made.
        for p in grads_of:
            p.grad = None
        return norm, reason

    def step(batches, weights: list[float] | None = None, want_norm: bool = True, before_zero_grad=None):
        loss = forward_backward(batches, weights)
        if not timed:
            norm, reason = update(loss, want_norm, before_zero_grad)
        else:
            with phase("optimizer"):
                norm, reason = update(loss, want_norm, before_zero_grad)
        return loss, norm, reason

    return step


def train_step(forward_backward: Callable, batches, optimizer: torch.optim.Optimizer, layout: Layout, *,
               params: list[nn.Parameter], grad_clip: float, want_norm: bool = True,
               weights: list[float] | None = None, guard=None, scaler: torch.amp.GradScaler | None = None,
               nonfinite_check=nonfinite_gradients, before_zero_grad=None,
               phase: Callable[[str], AbstractContextManager] = no_phase):
    """One optimizer step, nothing bound ahead (`make_train_step` for a run's steps)."""
    return make_train_step(forward_backward, optimizer, layout, params=params, grad_clip=grad_clip, guard=guard,
                           scaler=scaler, nonfinite_check=nonfinite_check, phase=phase)(
        batches, weights, want_norm, before_zero_grad)
