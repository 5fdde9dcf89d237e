"""May this start use this run folder, and which checkpoint does a resume continue from?

Every check here only reads: a start that is refused leaves the folder byte-identical. The trainer
writes nothing before all of them have passed (see `Trainer._fit`):

1. `check_folder` (before any data is read): train.run_dir is a writable folder; an occupied one is only
   used to continue a run (train.resume), and must hold one (config.yaml or checkpoints/); a
   finished run with no checkpoint left cannot be continued.
2. `check_same_config` (once the data and model are built): the run in the folder was made with
   this model and data.
3. `find_checkpoint` (rank 0, in `Trainer._resume`): the checkpoint to continue from is found and
   verified; then every rank loads it and the task checks its data position.
"""

from __future__ import annotations

from pathlib import Path

from scaletrain.config.schema import Config
from scaletrain.atomic import check_target
from scaletrain.errors import UserError
from scaletrain.train import checkpoint as ckpt

# Where the data lives, not what it is: moving a corpus or a cache keeps the run (the data itself is
# compared by fingerprint when the checkpoint's data position is checked).
_LOCATION_KEYS = ("cache_dir", "path")
_MODEL_LOCATION_KEYS = ("path", "init_from")
_FINISHED = ("model.safetensors", "summary.json")
_START_OVER = "start a new run with train.resume=false and a new train.run_dir"


def check_folder(cfg: Config, run_dir: Path) -> None:
    """The checks of train.run_dir and train.resume that need only the file system."""
    resume = cfg.train.resume
    # A file in the way or a read-only folder (or disk) is found before any work, not at the first write.
    check_target(run_dir, "train.run_dir", folder=True)
    try:
        occupied = run_dir.is_dir() and any(run_dir.iterdir())
    except OSError as exc:  # a folder we may not list
        raise UserError(f"train.run_dir: {run_dir}: {exc.strerror or exc}") from None
    if not occupied:
        return
    if not resume:
        raise UserError(f"train.run_dir: {run_dir} already holds a run; "
                        "continue it with train.resume=auto or choose another train.run_dir")
    if not (run_dir / "config.yaml").is_file() and not (run_dir / "checkpoints").is_dir():
        raise UserError(f"train.run_dir: {run_dir} is not empty and holds no run (no config.yaml, no "
                        f"checkpoints/); train.resume={resume} only continues a run: choose an empty or "
                        "new train.run_dir")
    finished = [name for name in _FINISHED if (run_dir / name).exists()]
    if resume == "auto" and finished and not ckpt.resume_candidates(run_dir / "checkpoints"):
        # A fresh start would overwrite the finished run's weights and summary.
        raise UserError(f"train.resume=auto: {run_dir} holds a finished run ({finished[0]}) but no checkpoint "
                        f"to continue from; {_START_OVER}")


def check_same_config(cfg: Config, run_dir: Path) -> None:
    """A resume into a folder that holds a run: its config.yaml must have this model and data."""
    saved_file = run_dir / "config.yaml"
    if not cfg.train.resume or not saved_file.is_file():
        return
    from scaletrain.config.load import load_config

    try:
        saved = load_config(str(saved_file))
    except UserError as exc:
        raise UserError(f"train.resume: cannot compare this config with the run's {saved_file}: {exc}") from None
    differences = config_differences(saved, cfg)
    if differences:
        shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
        raise UserError(f"train.resume={cfg.train.resume}: {run_dir} holds a run of another model or data "
                        f"config: {shown}; resume it with its own settings, or {_START_OVER}")


def config_differences(saved: Config, cfg: Config) -> list[str]:
    """`key (value here, value in the run)` for every model and data key that differs."""
    mine, theirs = _identity(cfg), _identity(saved)
    return [f"{key} ({_show(mine.get(key))} here, {_show(theirs.get(key))} in the run)"
            for key in sorted(set(mine) | set(theirs)) if mine.get(key) != theirs.get(key)]


def find_checkpoint(resume: str, run_dir: Path, model_spec: dict) -> tuple[Path | None, list[str]]:
    """(checkpoint to continue from, problems of newer ones skipped), on rank 0; reads only.

    `model_spec` is the model this run built (`Trainer.model_spec`), compared with the model
    description the checkpoint records, before anything is loaded or written."""
    found, skipped = ckpt.resolve_resume(resume, run_dir)
    if found is not None:
        ckpt.check_model_spec(found, ckpt.read_trainer_state(found), model_spec)
    return found, skipped


def _identity(cfg: Config) -> dict:
    data = cfg.data.model_dump(mode="json", exclude=set(_LOCATION_KEYS))
    if data.get("mixture"):
        data["mixture"] = [m["weight"] for m in data["mixture"]]
    # A model folder's location (model.path, model.init_from) is no more the model than data.path is
    # the data: what the folder held is compared through the checkpoint's model description.
    model = cfg.model.model_dump(mode="json", exclude=set(_MODEL_LOCATION_KEYS))
    return {**_flat("model", model), **_flat("data", data)}


def _flat(prefix: str, node) -> dict:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict = {}
    for key, value in node.items():
        out.update(_flat(f"{prefix}.{key}", value))
    return out


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
