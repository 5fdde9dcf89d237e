"""Checkpoints that survive a crash at any moment and resume bit for bit.

Layout: `checkpoints/step_00000500/` holds the model and optimizer as a torch.distributed.checkpoint
(DCP) folder — the format the parallel layouts will reshard — plus `trainer.json` (step, data
position, early-stopping state, Python/NumPy RNG), `rng.pt` (torch RNG tensors, read back with
`weights_only=True`: nothing is unpickled) and `checksums.json` (XXH3-128 of every file).

A checkpoint is built in a hidden temporary folder and renamed into place, so a folder named
`step_*` is always complete; older ones are deleted only after the new one is in place. Under
torch.distributed every rank writes its own shard of the DCP folder (see `parallel/state.py`), and
a checkpoint written by one layout or world size loads into any other.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
import xxhash
from torch import nn
import torch.distributed as dist

from scaletrain.errors import RunFailure, UserError
from scaletrain.parallel.state import load_train_state, train_state
from scaletrain.train import untrusted

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def _hash_file(path: Path) -> str:
    digest = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> tuple[dict, dict]:
    """(tensors, json-able) RNG state of torch, CUDA, NumPy's global generator and `random`."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    plain = {
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "python": [version, list(internal), gauss],
    }
    return tensors, plain


def set_rng_state(tensors: dict, plain: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(tensors["cuda"]))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict, keep_last: int) -> Path:
    """Save on every rank (a collective under torch.distributed): each rank writes its own shard,
    rank 0 the trainer state, the checksums and the final rename."""
    main = _rank() == 0
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}"  # one name every rank agrees on
    try:
        if main:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # a crash's leftover
            tmp.mkdir()
        _barrier()
        _write_files(tmp, model, optimizer, trainer_state, step, main)
    except (OSError, RuntimeError, CheckpointException) as exc:  # a full disk, a read-only folder
        raise _write_failure(root, tmp, step, exc, main) from None
    if main:
        replaced = None
        if final.exists():  # re-saving the same step (a resumed run reaching it again): move the old
            replaced = root / f".old-step_{step:08d}"  # one aside, never delete it first
            shutil.rmtree(replaced, ignore_errors=True)
            os.rename(final, replaced)
        os.rename(tmp, final)
        _fsync_dir(root)
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()  # nobody goes on (or resumes) before the checkpoint is in place
    return final


def _write_files(tmp: Path, model, optimizer, trainer_state: dict, step: int, main: bool) -> None:
    state = train_state(model, optimizer)
    with warnings.catch_warnings():  # "no process group: saving in a single process" is expected
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=str(tmp))
    del state
    if main:
        tensors, plain = rng_state()
        torch.save(tensors, tmp / "rng.pt")
        (tmp / "trainer.json").write_text(json.dumps({**trainer_state, "step": step, "rng": plain}))
        sums = {p.name: _hash_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / "checksums.json").write_text(json.dumps(sums, indent=1))
        for p in tmp.iterdir():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)


def _write_failure(root: Path, tmp: Path, step: int, exc: BaseException, main: bool) -> RunFailure:
    """One line for a checkpoint that could not be written; its partial folder is removed (it
    would hold the space a retry needs) and the last complete checkpoint is named, untouched."""
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(exc, OSError) and exc.strerror:
        reason = f"{exc.strerror} ({exc.filename or root})"
    else:  # DCP and torch.save wrap the OSError of a full disk in their own messages
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else type(exc).__name__
    try:
        free = f"; {shutil.disk_usage(root).free / 2**20:.1f} MiB free there"
    except OSError:
        free = ""
    previous = list_checkpoints(root)
    kept = f"the last complete checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
    return RunFailure(f"checkpoint step {step} could not be written to {root}: {reason}{free}; {kept} "
                      "(free space or fix the folder, then continue with train.resume=auto)")


def verify_checkpoint(path: Path) -> list[str]:
    """Problems found in a checkpoint folder (empty list: intact)."""
    sums_file = path / "checksums.json"
    if not sums_file.is_file():
        return [f"{sums_file}: missing"]
    try:
        sums = json.loads(sums_file.read_text())
    except ValueError:
        return [f"{sums_file}: not valid JSON"]
    problems = []
    for name, expected in sums.items():
        file = path / name
        if not file.is_file():
            problems.append(f"{file}: missing")
        elif _hash_file(file) != expected:
            problems.append(f"{file}: checksum mismatch")
    if not problems:  # intact, but possibly planted: refuse pickles that would run code
        for name, check in ((".metadata", untrusted.check_metadata), ("rng.pt", untrusted.check_torch_file)):
            if (path / name).is_file() and (reason := check(path / name)):
                problems.append(f"{path / name}: {reason}")
    return problems


def _set_aside(root: Path) -> list[Path]:
    """`.old-step_N` folders whose `step_N` is missing: re-saving step N moves the old folder aside
    before the new one is renamed in, and a crash between the two renames leaves step N only there
    (it is complete)."""
    if not root.is_dir():
        return []
    return [old for old in root.glob(".old-step_*")
            if _STEP_DIR.match(old.name.removeprefix(".old-")) and not (root / old.name.removeprefix(".old-")).exists()]


def resume_candidates(root: Path) -> list[Path]:
    """Checkpoints under `root` a resume may continue from, oldest first: the complete ones and
    those a crash left set aside (see `recover_replaced`), which are read where they are."""
    return sorted([*list_checkpoints(root), *_set_aside(root)], key=lambda p: p.name.removeprefix(".old-"))


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint folder is named after (`step_00000500`, or `.old-step_00000500` set
    aside); None for a folder named otherwise (a checkpoint copied under another name)."""
    m = _STEP_DIR.match(path.name.removeprefix(".old-"))
    return int(m.group(1)) if m else None


def recover_replaced(root: Path) -> None:
    """Put back a checkpoint a crash left set aside (`.old-step_N`, see `_set_aside`), or drop it
    when the new step N made it. A write: the trainer calls it once the start is checked."""
    if not root.is_dir():
        return
    aside = set(_set_aside(root))
    for old in root.glob(".old-step_*"):
        if old in aside:
            os.rename(old, root / old.name.removeprefix(".old-"))
        else:
            shutil.rmtree(old, ignore_errors=True)


def resolve_resume(resume: str, run_dir: Path) -> tuple[Path | None, list[str]]:
    """(checkpoint to resume from, problems of newer ones skipped); reads only, writes nothing.

    `auto`: the newest intact checkpoint of this run (a damaged newer one is skipped and reported;
    when there are checkpoints and none is intact, a UserError: starting over would overwrite the
    run); None when the run has no checkpoint yet. A path: that checkpoint, or the newest of that
    run folder, which must be intact. The path returned may be a set-aside `.old-step_N` folder.
    """
    if resume == "auto":
        candidates = resume_candidates(run_dir / "checkpoints")
    else:
        path = Path(resume).expanduser()
        candidates = resume_candidates(path / "checkpoints") or resume_candidates(path) or [path]
    skipped: list[str] = []
    for candidate in reversed(candidates):
        problems = verify_checkpoint(candidate)
        if not problems:
            return candidate, skipped
        if resume != "auto":
            raise UserError(f"train.resume: checkpoint {candidate} is damaged: {problems[0]}")
        skipped.append(f"{candidate.name}: {problems[0]}")
    if skipped:
        raise UserError(f"train.resume=auto: no intact checkpoint in {run_dir / 'checkpoints'} (newest "
                        f"{skipped[0]}); nothing was changed. To start over, train with train.resume=false "
                        "and a new train.run_dir")
    return None, skipped


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                    verified: bool = False) -> dict:
    """Restore model, optimizer and RNG in place on every rank; return the saved trainer state.

    The checkpoint may come from another world size or layout: DCP reads the slices each rank
    needs now (resharding). `verified`: the checksums were already checked (by rank 0).
    """
    if not verified:
        problems = verify_checkpoint(path)
        if problems:
            raise UserError(f"checkpoint {path} is damaged: {problems[0]}")
    state = train_state(model, optimizer, for_load=True)
    reason = untrusted.check_metadata(path / ".metadata")  # every rank reads it: every rank checks
    if reason:
        raise UserError(f"checkpoint {path / '.metadata'}: {reason}")
    planner = untrusted.PlainDataLoadPlanner()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, checkpoint_id=str(path), planner=planner)
    except (Exception, CheckpointException) as exc:  # a key or shape mismatch: another model's
        if planner.refused:
            raise UserError(f"checkpoint {path}: refused a pickled object that is not plain data "
                            f"({planner.refused}); nothing from it was run") from None
        lines = str(exc).strip().splitlines()
        reason = lines[-1] if lines else type(exc).__name__  # DCP puts the cause on the last line
        raise UserError(f"checkpoint {path} does not match this model/optimizer: {reason}") from None
    load_train_state(model, optimizer, state)
    trainer = json.loads((path / "trainer.json").read_text())
    reason = untrusted.check_torch_file(path / "rng.pt")
    if reason:
        raise UserError(f"checkpoint {path / 'rng.pt'}: {reason}")
    set_rng_state(torch.load(path / "rng.pt", weights_only=True), trainer.pop("rng"))
    return trainer
