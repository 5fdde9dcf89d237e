"""What the trainer does across ranks besides training: agree on decisions, compare step times,
account for memory, name a rank that stopped answering, and write one consolidated model."""

from __future__ import annotations

import datetime
import statistics
import threading
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from scaletrain.errors import RunFailure, UserError
from scaletrain.parallel.dist import collective_device
from scaletrain.parallel.state import load_full_state, meta_skeleton  # noqa: F401  (the export uses them)


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def on_main(fn, *args, **kwargs):
    """Run `fn` on rank 0 and hand its result to every rank.

    A failure reaches every rank at once, instead of leaving the others waiting in their next
    collective until parallel.timeout_seconds: rank 0 raises its own exception; the other ranks a
    UserError with the same line when it was bad input (every rank then exits 2), otherwise a
    RunFailure naming rank 0's error."""
    return _on_main(fn, args, kwargs, share=True)


def main_only(fn, *args, **kwargs):
    """`on_main` for work whose result stays on rank 0 (a file written, a log opened): the other
    ranks get None, and rank 0's failure as `on_main` hands it on."""
    return _on_main(fn, args, kwargs, share=False)


def _on_main(fn, args, kwargs, share: bool):
    result, failure, caught = None, None, None
    if rank() == 0:
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others know
            caught = exc
            failure = (isinstance(exc, UserError), str(exc) if isinstance(exc, UserError) else _describe(exc))
    if dist.is_initialized():
        box = [(result if share and caught is None else None, failure)]
        dist.broadcast_object_list(box, src=0)
        if rank() != 0:
            result, failure = box[0]
    if caught is not None:
        raise caught
    if failure is not None:
        bad_input, message = failure
        if bad_input:
            raise UserError(message)
        raise RunFailure(f"rank 0 failed: {message}")
    return result


def _describe(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__
    return text if len(text) < 300 else text[:300] + " ..."


def gather_floats(value: float) -> list[float]:
    """`value` of every rank, in rank order (one small all-gather)."""
    if not dist.is_initialized():
        return [value]
    t = torch.tensor([value], dtype=torch.float64, device=collective_device())
    out = [torch.zeros_like(t) for _ in range(world())]
    dist.all_gather(out, t)
    return [float(x) for x in out]


def stragglers(seconds: list[float], factor: float) -> list[int]:
    """Ranks slower than `factor` x the median of the other ranks (with 2 ranks: the other one)."""
    if len(seconds) < 2:
        return []
    slow = []
    for r, s in enumerate(seconds):
        others = statistics.median(seconds[:r] + seconds[r + 1:])
        if others > 0 and s > factor * others:
            slow.append(r)
    return slow


def _local_bytes(t: torch.Tensor) -> int:
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t.to_local()
    return t.numel() * t.element_size()


def model_state_bytes(params: list[nn.Parameter], grad_bytes: int, optimizer) -> int:
    """Bytes of parameters, gradients and optimizer state this rank holds (local shards only)."""
    state = getattr(optimizer, "optim", optimizer).state  # ZeRO-1 keeps the local state in .optim
    optim_bytes = sum(_local_bytes(v) for s in state.values() for v in s.values()
                      if isinstance(v, torch.Tensor))
    return sum(_local_bytes(p) for p in params) + grad_bytes + optim_bytes


def grad_bytes(params: list[nn.Parameter]) -> int:
    return sum(_local_bytes(p.grad) for p in params if p.grad is not None)


def gather_objects(obj) -> list:
    if not dist.is_initialized():
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


class Watchdog:
    """Names the rank that stopped answering when a collective times out.

    A separate gloo group is used because the training group may be wedged after a timeout;
    `monitored_barrier` reports exactly which ranks did not arrive.
    """

    def __init__(self, timeout_seconds: float):
        self.timeout = datetime.timedelta(seconds=min(timeout_seconds, 30.0))
        self.group = dist.new_group(backend="gloo") if dist.is_initialized() else None

    def failure(self, step: int, exc: BaseException, timeout_seconds: float) -> RunFailure:
        missing = "another rank"
        if self.group is not None:
            outcome: dict = {}

            def probe() -> None:
                try:
                    dist.monitored_barrier(group=self.group, timeout=self.timeout, wait_all_ranks=True)
                    outcome["answered"] = True
                except RuntimeError as barrier_exc:
                    outcome["error"] = str(barrier_exc)

            # monitored_barrier times out on rank 0, which hears from every rank; the other ranks
            # only wait for rank 0's answer, without a limit: when rank 0 is the one stalled they
            # would hang with it. A thread bounds that wait, and silence then names rank 0.
            thread = threading.Thread(target=probe, daemon=True)
            thread.start()
            thread.join(self.timeout.total_seconds() + 5.0)
            if thread.is_alive():
                missing = "rank 0"
            elif outcome.get("answered"):
                missing = None
            else:
                missing = _ranks_named(outcome.get("error", "")) or "another rank"
        if missing is None:  # everyone answered: not a stall but a real error; keep its message
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            reason = reason if len(reason) < 300 else reason[:300] + " ..."
            return RunFailure(f"rank {rank()}: step {step + 1} failed: {reason}")
        return RunFailure(f"step {step + 1}: a collective waited more than {timeout_seconds:g} s "
                          f"(parallel.timeout_seconds): {missing} did not arrive")


def _ranks_named(message: str) -> str | None:
    """The ranks a monitored_barrier failure names ("Rank 1 failed ..." / "Ranks 1, 3 failed ...")."""
    import re

    m = re.search(r"[Rr]anks? ([\d, ]+?) failed", message)
    found = sorted({int(x) for x in re.findall(r"\d+", m.group(1))} - {rank()}) if m else []
    if not found:
        return None
    return ("rank " if len(found) == 1 else "ranks ") + ", ".join(map(str, found))


def export_full_model(layout_model: nn.Module, fresh_model_factory, path: Path, sharded: bool,
                      spec: dict | None = None) -> None:
    """Write consolidated `model.safetensors` on rank 0 (every rank must call: it may gather).
    `sharded`: the model's parameters are DTensor shards (FSDP, TP; else plain tensors, the same on
    every rank). `fresh_model_factory()` gives the plain module to fill (a `meta_skeleton` will
    do); `spec`, the model description, is recorded in the file's metadata."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = None
    if sharded:
        full = get_model_state_dict(layout_model, options=StateDictOptions(full_state_dict=True,
                                                                           cpu_offload=True))
    # Rank 0 alone builds and writes the file: a failure there (a full disk) stops every rank.
    main_only(_save_full_model, layout_model, full, fresh_model_factory, path, spec)


def _save_full_model(layout_model: nn.Module, full: dict | None, fresh_model_factory, path: Path,
                     spec: dict | None) -> None:
    from scaletrain.untrusted.weights import save_weights

    model = layout_model if full is None else load_full_state(fresh_model_factory(), full)
    save_weights(model, path, spec=spec)
