"""Checkpoints that survive a crash at any moment and resume bit for bit.

Layout: `checkpoints/step_00000500/` holds the model and optimizer as a torch.distributed.checkpoint
(DCP) folder — the format the parallel layouts will reshard — plus `trainer.json` (step, data
position, early-stopping state, Python/NumPy RNG, the model description it was made with),
`rng.safetensors` (torch RNG tensors: no pickle) and `checksums.json` (XXH3-128 of every file).
A checkpoint may come from outside (a shared disk, a download): it is read only through
`scaletrain.untrusted` (no pickle but DCP's checked metadata, paths kept inside the folder, every
JSON field checked), and a checkpoint of another model is refused naming what differs.

A checkpoint is built in a hidden temporary folder and renamed into place, so a folder named
`step_*` is always complete; older ones are deleted only after the new one is in place. Under
torch.distributed every rank writes its own shard of the DCP folder (see `parallel/state.py`), and
a checkpoint written by one layout or world size loads into any other.

With `checkpoint.async_save` the model and optimizer are copied to CPU memory at the step (DCP's
`async_save`, thread mode) and written while training goes on; the checksums, the rename into place
and the pruning of old checkpoints wait until the write has completed: `finish_pending_save()`,
called by the next save and at the end of the run. Until then the folder stays hidden, so a crash
during the write leaves the previous checkpoint in place and intact.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import shutil
import warnings
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
import xxhash
from torch import nn
import torch.distributed as dist

from scaletrain.atomic import FILE_MODE
from scaletrain.errors import RunFailure, UserError
from scaletrain.parallel.state import load_train_state, train_state
from scaletrain.untrusted import checkpoint as untrusted_dcp
from scaletrain.untrusted.files import field, inside, read_json
from scaletrain.untrusted.pickles import load_weights_only, read_metadata
from scaletrain.untrusted.weights import read_header, spec_differences

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
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # This process's device only: get_rng_state_all() would open a context on every GPU of the
        # node, from every rank (hundreds of MiB each, taken from the other ranks' GPUs).
        tensors["cuda"] = torch.cuda.get_rng_state()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    plain = {
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "python": [version, list(internal), gauss],
    }
    return tensors, plain


def set_rng_state(tensors: dict, plain: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available() and torch.cuda.is_initialized():  # a CUDA run
        state = tensors["cuda"]
        if state.dim() == 2:  # written by get_rng_state_all(): one row per GPU; this one's
            state = state[min(torch.cuda.current_device(), len(state) - 1)]
        torch.cuda.set_rng_state(state)
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


@dataclass
class _PendingSave:
    """An async save whose DCP write may still run; sealed and put in place by finish_pending_save."""

    future: Future
    root: Path
    tmp: Path
    final: Path
    step: int
    keep_last: int


_pending: _PendingSave | None = None  # this process's async save in flight (one at a time)
_async_group: tuple | None = None  # (the default group, the gloo group async writes coordinate on)


def save_checkpoint(root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict, keep_last: int, *, async_save: bool = False,
                    extra: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Save on every rank (a collective under torch.distributed): each rank writes its own shard,
    rank 0 the trainer state, the checksums and the final rename. Rank 0's own steps run through
    `ranks.main_only`, so a failure there (a full disk) reaches every rank at once instead of
    leaving them waiting in the next collective.

    `async_save`: return once the state is copied to CPU memory; the files are written in a
    background thread, and the checkpoint is sealed and put in place (the path returned) by
    `finish_pending_save()`. A previous async save is finished first. `extra`: more groups of
    tensors saved beside the model (name -> {parameter name: tensor}: the EMA and best weights of
    scaletrain.train.shadow), sharded as the tensors are."""
    from scaletrain.train.ranks import main_only

    finish_pending_save()
    main = _rank() == 0
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}"  # one name every rank agrees on
    try:
        main_only(_fresh_folder, root, tmp)  # every rank waits for it (a barrier)
        state = {**train_state(model, optimizer), **(extra or {})}
        if async_save:
            future = _start_async_write(state, tmp)
        else:
            with warnings.catch_warnings():  # "no process group: saving in a single process" is expected
                warnings.simplefilter("ignore", UserWarning)
                dcp.save(state, checkpoint_id=str(tmp))
        del state
        # The RNG and loop state of this step, written now (an async write ends steps later);
        # sealed now unless DCP's shards are still being written.
        main_only(_write_state_files, tmp, trainer_state, step, seal=not async_save)
    except (OSError, RuntimeError, CheckpointException) as exc:  # a full disk, a read-only folder
        raise _write_failure(root, tmp, step, exc, main) from None
    if async_save:
        global _pending
        _pending = _PendingSave(future, root, tmp, final, step, keep_last)
        return final
    # Nobody goes on (or resumes) before the checkpoint is in place: main_only waits for it.
    main_only(_put_in_place, root, tmp, final, step, keep_last)
    return final


def _start_async_write(state: dict, tmp: Path) -> Future:
    """dcp.async_save in thread mode: the state is staged (copied to CPU memory) before it returns,
    so the training that goes on cannot change what is written. Its ranks coordinate on a gloo group
    of their own, beside the training's collectives."""
    global _async_group
    group = None
    if dist.is_initialized():
        default = dist.distributed_c10d._get_default_group()
        if _async_group is None or _async_group[0] is not default:
            from scaletrain.parallel.dist import new_cpu_group

            _async_group = (default, new_cpu_group())
        group = _async_group[1]
    else:  # the write thread's "no process group: saving in a single process" is expected
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
    return dcp.async_save(state, checkpoint_id=str(tmp), process_group=group)


def finish_pending_save() -> Path | None:
    """Wait for the async save in flight (every rank calls this), then seal it and put it in place,
    pruning old checkpoints; its path, or None when there was none. A failed write raises the same
    RunFailure as a synchronous one, on every rank, and leaves the previous checkpoints as they were."""
    global _pending
    from scaletrain.train.ranks import gather_objects, main_only

    pending, _pending = _pending, None
    if pending is None:
        return None
    main = _rank() == 0
    try:
        pending.future.result()
        problem = None
    except (OSError, RuntimeError, CheckpointException) as exc:
        problem = exc
    # Every rank hears of any rank's failure before rank 0 seals (else the others would wait for it).
    failed = [p for p in gather_objects(None if problem is None else _one_line(problem)) if p is not None]
    try:
        if problem is not None:
            raise problem
        if failed:
            raise RuntimeError(failed[0])
        main_only(_seal, pending.tmp)
    except (OSError, RuntimeError, CheckpointException) as exc:
        raise _write_failure(pending.root, pending.tmp, pending.step, exc, main) from None
    main_only(_put_in_place, pending.root, pending.tmp, pending.final, pending.step, pending.keep_last)
    return pending.final


def drop_pending_save() -> None:
    """After a failure: wait for the async write in flight to end (the process group must outlive
    its thread) and leave its folder hidden and unsealed, so the previous checkpoint stays the
    newest, as after a crash during the write."""
    global _pending
    pending, _pending = _pending, None
    if pending is not None:
        try:
            pending.future.result()
        except Exception:  # noqa: BLE001 - the run is failing already; this write is abandoned
            pass


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _fresh_folder(root: Path, tmp: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)  # a crash's leftover
    tmp.mkdir()


def _write_state_files(tmp: Path, trainer_state: dict, step: int, seal: bool) -> None:
    from safetensors.torch import save_file

    tensors, plain = rng_state()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "rng.safetensors"))
    os.chmod(tmp / "rng.safetensors", FILE_MODE)  # safetensors creates 0600; follow the umask
    (tmp / "trainer.json").write_text(json.dumps({**trainer_state, "step": step, "rng": plain}))
    if seal:
        _seal(tmp)


def _seal(tmp: Path) -> None:
    """Checksums of every file (DCP's shards included: call it once they are all written), then
    everything flushed to disk."""
    sums = {p.name: _hash_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / "checksums.json").write_text(json.dumps(sums, indent=1))
    for p in tmp.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)


def _put_in_place(root: Path, tmp: Path, final: Path, step: int, keep_last: int) -> None:
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
    """Problems found in a checkpoint folder (empty list: intact and plain data only).

    The checksums prove that the files belong together; whoever planted them can rewrite the
    checksums too, so every file is then also read the way a load will read it, without
    unpickling anything: DCP's metadata (its classes, fields and the data files it names),
    `trainer.json` (every field) and the RNG state.
    """
    sums_file = path / "checksums.json"
    try:
        sums = read_json(sums_file, what="a checkpoint's checksum list")
        problems = []
        for name, expected in sums.items():
            file = inside(path, name, what="checksums.json")
            if not isinstance(expected, str):
                problems.append(f"{sums_file}: the checksum of {name!r} is not a string")
            elif not file.is_file():
                problems.append(f"{file}: missing")
            elif _hash_file(file) != expected:
                problems.append(f"{file}: checksum mismatch")
        # Every file a load reads must be covered: an unlisted one would be read unverified.
        present = {p.name for p in path.iterdir() if p.is_file() and p.name != "checksums.json"}
        for name in sorted(present - set(sums)) + [r for r in (".metadata", "trainer.json") if r not in present]:
            problems.append(f"{path / name}: not listed in checksums.json (an incomplete or altered checkpoint)")
        if problems:
            return problems
        metadata = read_metadata(path / ".metadata")
        unlisted = {info.relative_path for info in metadata.storage_data.values()} - set(sums)
        if unlisted:
            return [f"{path / sorted(unlisted)[0]}: named by .metadata but not listed in checksums.json"]
        read_trainer_state(path)
        _rng_tensors(path)
    except UserError as exc:
        return [str(exc)]
    return []


_LOOP_FIELDS = {  # trainer.json: key -> (types, minimum); LoopState's fields and what else a save adds
    "step": (int, 0), "position": (int, 0), "best_val": ((int, float), None), "best_step": (int, -1),
    "bad_evals": (int, 0), "units_seen": (int, 0), "train_seconds": ((int, float), 0),
    "evals": (list, None), "skipped_steps": (int, 0), "rollbacks": (int, 0), "lr_scale": ((int, float), None),
    "fitted_steps": (int, 0), "budget_fits": (int, 0),
}


def read_trainer_state(path: Path) -> dict:
    """`trainer.json` of a checkpoint, every field checked: UserError naming the file and key."""
    file = path / "trainer.json"
    state = read_json(file, what="a checkpoint's trainer state", allow_nonfinite=True)  # best_val: inf
    unknown = set(state) - set(_LOOP_FIELDS) - {"data", "rng", "model"}
    if unknown:
        raise UserError(f"{file}: unknown key {sorted(unknown)[0]!r}")
    for key, (kinds, minimum) in _LOOP_FIELDS.items():
        if key not in state:
            continue
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, kinds if isinstance(kinds, tuple) else (kinds,)):
            raise UserError(f"{file}: {key!r} must be {getattr(kinds, '__name__', 'a number')} (got {value!r:.40})")
        if minimum is not None and value < minimum:
            raise UserError(f"{file}: {key!r} is {value}, below {minimum}")
    if "lr_scale" in state and not (0 < state["lr_scale"] <= 1 and math.isfinite(state["lr_scale"])):
        raise UserError(f"{file}: 'lr_scale' must be in (0, 1] (got {state['lr_scale']!r})")
    for item in state.get("evals", []):
        if not (isinstance(item, dict) and set(item) == {"step", "val_loss"}):
            raise UserError(f"{file}: 'evals' must list {{step, val_loss}} records")
    field(state, "rng", dict, file)
    for key in ("data", "model"):
        if key in state and not isinstance(state[key], dict):
            raise UserError(f"{file}: {key!r} must be an object")
    _check_rng_plain(state["rng"], file)
    return state


def _check_rng_plain(rng: dict, file: Path) -> None:
    try:
        name, keys, pos, has_gauss, cached = rng["numpy"]
        version, internal, gauss = rng["python"]
        ok = (name == "MT19937" and isinstance(keys, list) and len(keys) == 624
              and all(isinstance(k, int) and 0 <= k < 2**32 for k in keys)
              and isinstance(pos, int) and 0 <= pos <= 624 and has_gauss in (0, 1)
              and isinstance(cached, (int, float)) and isinstance(version, int)
              and isinstance(internal, list) and len(internal) == 625
              and all(isinstance(k, int) and 0 <= k < 2**32 for k in internal[:-1])
              and isinstance(internal[-1], int) and 0 <= internal[-1] <= 624
              and (gauss is None or isinstance(gauss, (int, float))))
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"{file}: 'rng' is not a NumPy and Python random state")


def _rng_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The torch RNG tensors: `rng.safetensors`, or `rng.pt` of checkpoints written before it
    (read with torch's weights-only unpickler)."""
    from safetensors.torch import load_file

    if (path / "rng.safetensors").is_file():
        _, header = read_header(path / "rng.safetensors")
        if set(header) - {"torch", "cuda"} or header.get("torch", ("U8",))[0] != "U8":
            raise UserError(f"{path / 'rng.safetensors'}: not a torch RNG state")
        tensors = load_file(str(path / "rng.safetensors"))
    elif (path / "rng.pt").is_file():
        tensors = load_weights_only(path / "rng.pt", f"checkpoint {path / 'rng.pt'}")
    else:
        raise UserError(f"{path}: no RNG state (rng.safetensors)")
    if not isinstance(tensors, dict) or not isinstance(tensors.get("torch"), torch.Tensor) \
            or tensors["torch"].dtype != torch.uint8 or any(not isinstance(v, torch.Tensor) for v in tensors.values()):
        raise UserError(f"{path}: its RNG state is not a torch generator state")
    return tensors


def check_model_spec(path: Path, trainer_state: dict, model_spec: dict | None) -> None:
    """UserError naming the differing keys when the checkpoint was made for another model (the
    description it records against this run's). Checkpoints written before descriptions were
    recorded still load: their keys and shapes are compared instead."""
    saved = trainer_state.get("model")
    if saved is None or model_spec is None:
        return
    diff = spec_differences(saved, model_spec)
    if diff:
        raise UserError(f"checkpoint {path} was made for another model: {diff} (resume with the "
                        "checkpoint's model settings, or start a new run with train.resume=false)")


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
                    verified: bool = False, model_spec: dict | None = None, whole_model: bool = True,
                    extra: dict[str, dict[str, torch.Tensor]] | None = None) -> dict:
    """Restore model, optimizer and RNG in place on every rank; return the saved trainer state.

    The checkpoint may come from another world size or layout: DCP reads the slices each rank
    needs now (resharding). `verified`: the checksums were already checked (by rank 0); every
    rank still reads the metadata and trainer state through the checked readers. `model_spec`:
    this run's model description, compared with the one the checkpoint records. `whole_model`:
    `model` holds every weight (not a pipeline stage), so a weight in the checkpoint that it lacks
    means another architecture. `extra`: groups saved beside the model (see save_checkpoint),
    loaded in place where the checkpoint has them; a group it lacks is removed from `extra`.
    """
    if not verified:
        problems = verify_checkpoint(path)
        if problems:
            raise UserError(f"checkpoint {path} is damaged: {problems[0]}")
    trainer = read_trainer_state(path)
    check_model_spec(path, trainer, model_spec)
    rng = _rng_tensors(path)
    state = train_state(model, optimizer, for_load=True)
    if extra:
        saved = read_metadata(path / ".metadata").state_dict_metadata
        for group in [g for g in extra if not any(k.startswith(f"{g}.") for k in saved)]:
            extra.pop(group)
        state.update(extra)
    own_groups = copy.deepcopy(state["optim"]["param_groups"])  # DCP loads into the dicts in place
    # The optimizer's param_groups are plain values DCP stores as bytes: those (only) are read,
    # with torch's weights-only unpickler.
    untrusted_dcp.load_dcp(state, path, allow_bytes=True, strict_prefixes=("model.",) if whole_model else ())
    if not whole_model:
        # A pipeline stage: the checkpoint holds one rank's param_groups (DCP saves a non-tensor
        # value once), which name another stage's parameters; this stage keeps its own groups (their
        # hyperparameters are the config's: the trainer sets lr from base_lr at every step).
        state["optim"]["param_groups"] = own_groups
    load_train_state(model, optimizer, state)
    trainer.pop("model", None)
    try:
        set_rng_state(rng, trainer.pop("rng"))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise UserError(f"checkpoint {path}: its RNG state cannot be restored ({exc})") from None
    return trainer
