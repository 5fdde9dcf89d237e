"""Watch every torch.distributed collective of a real run and check the device of its tensors.

As a torchrun worker script it runs `scaletrain ARGS` as one rank with the watch installed and
writes what it saw to OUT/collectives-rank<R>.json:

    torchrun --standalone --nproc-per-node 2 tests/distributed/collective_probe.py \
        --out DIR --expect cpu -- train gpt-tiny parallel.strategy=ddp parallel.nproc=2 ...

Two checks, so that the test means something on a CPU too (where every device is the CPU):

1. every tensor that reaches a collective — ours, or torch's own (DDP, FSDP, DTensor, pipelining,
   DCP) — lies on the layout's device (`--expect cpu`, or `cuda` = cuda:LOCAL_RANK), and so does
   `scaletrain.parallel.dist.collective_device()`;
2. a tensor that scaletrain code builds with a factory (`torch.tensor`, `torch.zeros`, ...) and
   that reaches a collective was built with `device=collective_device()` — the object that
   function returns, not a device string, not the default device — so a call site that forgets
   the device fails here even where the default device happens to be the right one.

Object collectives (`broadcast_object_list`, ...) carry pickled objects, not tensors: torch moves
them to the group's object device itself (the CPU under `cpu:gloo,cuda:nccl`); the watch records
them, and the tensor collectives torch issues inside them are not checked. On CUDA it checks
instead that the current device is this rank's GPU whenever one is issued (NCCL and barriers use
the current device).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import threading
import weakref
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.distributed.distributed_c10d as c10d
from torch.overrides import TorchFunctionMode

TENSOR_COLLECTIVES = (
    "all_reduce", "all_reduce_coalesced", "all_gather", "all_gather_into_tensor", "all_gather_single",
    "all_gather_coalesced", "reduce_scatter", "reduce_scatter_tensor", "reduce_scatter_single",
    "broadcast", "reduce", "gather", "scatter", "all_to_all", "all_to_all_single",
    "send", "recv", "isend", "irecv", "batch_isend_irecv", "barrier", "monitored_barrier",
)
OBJECT_COLLECTIVES = ("broadcast_object_list", "all_gather_object", "gather_object", "scatter_object_list",
                      "send_object_list", "recv_object_list")
FUNCTIONAL_COLLECTIVES = (  # DTensor (tensor parallel, FSDP's state dicts) goes through these
    "all_reduce", "all_reduce_coalesced", "all_gather_tensor", "all_gather_tensor_autograd",
    "all_gather_into_tensor_coalesced", "reduce_scatter_tensor", "reduce_scatter_tensor_autograd",
    "reduce_scatter_tensor_coalesced", "broadcast", "all_to_all_single", "all_to_all_single_autograd",
)
FACTORIES = {torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.arange,
             torch.rand, torch.randn}


def _module_of(frame) -> str:
    return frame.f_globals.get("__name__", "") if frame is not None else ""


def _site(frame) -> str:
    """`scaletrain/train/guard.py:54` of the innermost scaletrain frame above `frame`, else the
    innermost caller's own file and line (a torch module's)."""
    first = None
    while frame is not None:
        module = _module_of(frame)
        if module != __name__:
            first = first or frame
            if module.startswith("scaletrain"):
                break
        frame = frame.f_back
    frame = frame or first
    if frame is None:
        return "?"
    path = frame.f_code.co_filename
    for root in ("scaletrain", "torch"):
        if f"/{root}/" in path:
            path = root + "/" + path.rsplit(f"/{root}/", 1)[1]
            break
    return f"{path}:{frame.f_lineno}"


def _tensors(value, depth: int = 0):
    if depth > 3:
        return
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item, depth + 1)
    elif isinstance(value, dist.P2POp):
        yield value.tensor


class Watch:
    """Wraps the collectives and tensor factories; `violations` lists what broke a rule."""

    def __init__(self, expected: torch.device):
        self.expected = expected
        self.calls: collections.Counter = collections.Counter()
        self.sites: collections.Counter = collections.Counter()
        self.devices: collections.Counter = collections.Counter()
        self.violations: list[str] = []
        self._made: dict[int, tuple] = {}  # id(tensor) -> (weakref, site, built on collective_device())
        self._local = threading.local()
        self._restore: list[tuple[object, str, object]] = []
        self._mode: TorchFunctionMode | None = None

    # ---- what the checks read ------------------------------------------------------------------
    def _collective_device(self) -> torch.device:
        from scaletrain.parallel.dist import collective_device

        return collective_device()

    def _violate(self, message: str) -> None:
        if message not in self.violations:
            self.violations.append(message)

    def _check_tensors(self, name: str, site: str, args, kwargs) -> None:
        asked = self._collective_device()
        if asked != self.expected:
            self._violate(f"{name} at {site}: collective_device() is {asked}, the layout's device {self.expected}")
        for t in _tensors((args, kwargs)):
            local = t.to_local() if hasattr(t, "to_local") else t
            self.devices[str(local.device)] += 1
            if local.device != self.expected:
                self._violate(f"{name} at {site}: a tensor on {local.device}, the layout's device is {self.expected}")
            made = self._made.get(id(t))
            if made is not None and made[0]() is t and not made[2]:
                self._violate(f"{name} at {site}: its tensor was built at {made[1]} without "
                              "device=collective_device()")

    def _check_current_cuda(self, name: str, site: str) -> None:
        if self.expected.type == "cuda" and torch.cuda.current_device() != self.expected.index:
            self._violate(f"{name} at {site}: the current CUDA device is {torch.cuda.current_device()}, "
                          f"this rank's is {self.expected.index} (torch.cuda.set_device missing)")

    # ---- wrappers --------------------------------------------------------------------------------
    def _collective(self, name: str, fn, objects: bool):
        watch = self

        def watched(*args, **kwargs):
            depth = getattr(watch._local, "depth", 0)
            if depth:  # inside an object collective: torch chose the device itself
                return fn(*args, **kwargs)
            site = _site(sys._getframe(1))
            watch.calls[name] += 1
            watch.sites[f"{name} {site}"] += 1
            if objects or name in ("barrier", "monitored_barrier"):
                watch._check_current_cuda(name, site)
            if objects:
                watch._local.depth = 1
                try:
                    return fn(*args, **kwargs)
                finally:
                    watch._local.depth = 0
            watch._check_tensors(name, site, args, kwargs)
            return fn(*args, **kwargs)

        watched.__wrapped__ = watched.__watched__ = fn
        return watched

    def _built(self, t, device, caller) -> None:
        """A factory's tensor, built by scaletrain code: remember where, and whether on the device
        `collective_device()` gives (the same object)."""
        if _module_of(caller).startswith("scaletrain") and isinstance(t, torch.Tensor):
            asked = device is not None and device is self._collective_device()
            key = id(t)  # dropped with the tensor: a long run builds many (positions, batches)
            ref = weakref.ref(t, lambda _, key=key: self._made.pop(key, None))
            self._made[key] = (ref, _site(caller), asked)

    def _patch(self, owner, name: str, wrapper) -> None:
        self._restore.append((owner, name, getattr(owner, name)))
        setattr(owner, name, wrapper)

    def install(self) -> "Watch":
        """Patch torch.distributed (and its c10d module, whose own functions call one another: P2POp
        checks `op in (isend, irecv)` against them), the functional collectives and the factories."""
        for names, objects in ((TENSOR_COLLECTIVES, False), (OBJECT_COLLECTIVES, True)):
            for name in names:
                original = getattr(c10d, name, None)
                if original is None:
                    continue
                wrapper = self._collective(name, original, objects)
                self._patch(c10d, name, wrapper)
                if getattr(dist, name, None) is original:
                    self._patch(dist, name, wrapper)
        for name in FUNCTIONAL_COLLECTIVES:
            if hasattr(funcol, name):
                self._patch(funcol, name, self._collective(f"funcol.{name}", getattr(funcol, name), False))
        self._mode = _Factories(self)  # a mode, not a patch: torch.jit.script resolves torch.zeros
        self._mode.__enter__()          # by name and cannot compile a Python wrapper
        return self

    def uninstall(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        for owner, name, original in reversed(self._restore):
            setattr(owner, name, original)
        self._restore.clear()

    def report(self) -> dict:
        return {"expected": str(self.expected), "calls": dict(self.calls), "sites": dict(self.sites),
                "devices": dict(self.devices), "violations": self.violations}


class _Factories(TorchFunctionMode):
    """Sees the tensor factories called in this thread (the one that issues the collectives)."""

    def __init__(self, watch: Watch):
        super().__init__()
        self.watch = watch

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # A collective that checks for torch-function overrides lands here with its public name,
        # which is our wrapper, already counted: call what it wraps.
        out = getattr(func, "__watched__", func)(*args, **kwargs)
        if func in FACTORIES:
            self.watch._built(out, kwargs.get("device"), sys._getframe(1))
        return out


def expected_device(kind: str) -> torch.device:
    if kind == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for collectives-rank<R>.json")
    ap.add_argument("--expect", choices=("cpu", "cuda"), required=True, help="the layout's device type")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="-- then the scaletrain command line")
    a = ap.parse_args(argv)
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    watch = Watch(expected_device(a.expect)).install()
    from scaletrain.cli.main import main as scaletrain_main

    try:
        code = scaletrain_main(args)
    finally:
        watch.uninstall()
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        rank = os.environ.get("RANK", "0")
        (out / f"collectives-rank{rank}.json").write_text(json.dumps(watch.report(), indent=1))
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
