"""`scaletrain verify CONFIG`: prove a parallel layout computes what one process computes.

Both runs train K steps on the same data through the real trainer: the configured layout (under
torchrun when it has several ranks) and the reference — one process, fp32, no accumulation, the
same global batch (so the same samples, by the loader's construction). After every step each run
records its loss and the full weights; the comparison prints, per step, the loss difference and
the relative parameter deviation ||w - w_ref|| / ||w_ref||, and fails beyond a tolerance that
depends on the optimizer and the precision (TOLERANCES, documented in docs/parallel.md).
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from scaletrain.atomic import atomic_path, check_target, new_folder
from scaletrain.config.schema import Config
from scaletrain.errors import UserError
from scaletrain.parallel.dims import ParallelDims

# (loss |difference|, parameter relative deviation). SGD-like updates are linear in the gradient:
# a layout only reorders float sums (~1e-7). Adaptive optimizers divide by sqrt(v), which magnifies
# the rounding of near-zero gradients (a plain full-batch reference differs by ~1e-4 after a few
# AdamW steps in fp32 on CPU, where SGD stays at ~1e-8). bf16 compute rounds
# every matmul to 8 bits of mantissa.
TOLERANCES = {
    ("sgd", "fp32"): (1e-5, 1e-5),
    ("adaptive", "fp32"): (1e-3, 2e-3),
    ("sgd", "bf16"): (5e-2, 5e-2),
    ("adaptive", "bf16"): (5e-2, 1e-1),
}
_SGD_LIKE = {"gd", "sgd", "momentum", "nesterov"}

_QUIET = ["train.eval_every=0", "train.checkpoint_every=0", "train.final_eval_batches=1",
          "log.sample_tokens=0", "log.trackers=[]", "log.progress=false", "train.resume=false",
          # K steps of the configured schedule would be all warmup: a constant lr compares the same
          "schedule.name=constant", "schedule.warmup_steps=0"]


def dropout(cfg: Config) -> tuple[float, str]:
    """The model's largest dropout rate and where it is set: model.dropout, model.lora.dropout, or
    (model.name=hf) a rate in the folder's config.json."""
    found = [(float(getattr(cfg.model, "dropout", 0) or 0), "model.dropout")]
    lora = getattr(cfg.model, "lora", None)
    if lora is not None:
        found.append((lora.dropout, "model.lora.dropout"))
    if cfg.model.name == "hf":
        from scaletrain.untrusted.hf import read_config

        config = read_config(Path(cfg.model.path).expanduser())
        found += [(float(v), f"{Path(cfg.model.path) / 'config.json'}: {k}") for k, v in config.items()
                  if ("dropout" in k or k.endswith("pdrop")) and k != "classifier_dropout"
                  and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return max(found, key=lambda item: item[0])


def tolerance(cfg: Config) -> tuple[float, float]:
    family = "sgd" if cfg.optim.name in _SGD_LIKE else "adaptive"
    from scaletrain.hardware import choose_precision

    device = cfg.train.device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = "fp32" if choose_precision(cfg.train.precision, device)[0] == "fp32" else "bf16"
    return TOLERANCES[(family, precision)]


def reference_overrides(cfg: Config) -> list[str]:
    t = cfg.train
    dp = _dp_world(cfg)
    return ["parallel.strategy=single", "parallel.nproc=1", "parallel.nnodes=1", "train.precision=fp32",
            "train.grad_accum=1", f"train.batch_size={t.batch_size * t.grad_accum * dp}",
            "parallel.activation_checkpointing=false", "train.compile=false"]


def _dims(cfg: Config) -> ParallelDims:
    return ParallelDims.from_config(cfg.parallel, cfg.parallel.nproc * cfg.parallel.nnodes)


def _dp_world(cfg: Config) -> int:
    return _dims(cfg).dp_size


def record_run(source: str | None, overrides: list[str], out: Path) -> None:
    """Train (this process is one rank, or the only one) and save loss + weights after each step."""
    from safetensors.torch import save_file

    from scaletrain.config.load import load_config
    from scaletrain.train.build import build_trainer

    cfg = load_config(source, overrides)
    trainer = build_trainer(cfg)

    def hook(trainer, step: int, loss: torch.Tensor) -> None:
        weights = trainer.full_state_dict()
        if trainer.dist_info.is_main:
            unique = {}
            seen = set()
            for name, tensor in weights.items():  # tied weights appear twice
                if tensor.data_ptr() in seen:
                    continue
                seen.add(tensor.data_ptr())
                unique[name] = tensor.float().contiguous()
            with atomic_path(out / f"step_{step:05d}.safetensors") as tmp:  # the umask's mode
                save_file(unique, str(tmp), metadata={"loss": repr(float(loss))})

    trainer.step_hook = hook
    trainer.fit()


def compare(run: Path, ref: Path, steps: int) -> list[dict]:
    from safetensors import safe_open

    rows = []
    for step in range(1, steps + 1):
        name = f"step_{step:05d}.safetensors"
        with safe_open(run / name, "pt") as a, safe_open(ref / name, "pt") as b:
            loss_a, loss_b = float(a.metadata()["loss"]), float(b.metadata()["loss"])
            diff_sq = ref_sq = 0.0
            max_abs = 0.0
            for key in b.keys():
                if key not in a.keys():
                    raise UserError(f"verify: parameter {key} is missing from the layout's weights")
                wa, wb = a.get_tensor(key).double(), b.get_tensor(key).double()
                diff_sq += float((wa - wb).pow(2).sum())
                ref_sq += float(wb.pow(2).sum())
                max_abs = max(max_abs, float((wa - wb).abs().max()))
        rows.append({"step": step, "loss": loss_a, "ref_loss": loss_b, "loss_diff": abs(loss_a - loss_b),
                     "param_rel_dev": math.sqrt(diff_sq / max(ref_sq, 1e-30)), "param_max_abs": max_abs})
    return rows


def verify(cfg: Config, source: str | None, overrides: list[str], steps: int, keep: Path | None = None) -> tuple[list[dict], tuple[float, float]]:
    """Record both runs (in `keep`, or in a temporary folder removed afterwards, also on failure)
    and compare them."""
    rate, key = dropout(cfg)
    if rate > 0:
        raise UserError(f"verify: {key} must be 0 (dropout masks differ between layouts by design)")
    if keep is not None:
        _check_keep(keep)
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(new_folder(keep))
            except OSError as exc:  # e.g. under /proc, which even root cannot write
                raise UserError(f"--keep: cannot create {keep}: {exc.strerror or exc}") from None
            return _verify(cfg, source, overrides, steps, keep)
    with tempfile.TemporaryDirectory(prefix="scaletrain-verify-") as root:
        return _verify(cfg, source, overrides, steps, Path(root))


def _check_keep(keep: Path) -> None:
    check_target(keep, "--keep", folder=True, must_be_new=True)


def _verify(cfg: Config, source: str | None, overrides: list[str], steps: int, root: Path):
    base = [*overrides, f"train.max_steps={steps}", *_QUIET]
    run_dir, ref_dir = root / "layout", root / "reference"
    run_dir.mkdir(parents=True, exist_ok=True)
    ref_dir.mkdir(parents=True, exist_ok=True)
    layout_args = [*base, f"train.run_dir={root / 'layout-run'}"]
    world = cfg.parallel.nproc * cfg.parallel.nnodes
    if world > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               str(cfg.parallel.nproc), "-m", "scaletrain.cli.verify_worker", str(run_dir),
               *([source] if source else []), *layout_args]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
            last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            reason = errors[0].removeprefix("error: ") if errors else last
            raise UserError(f"verify: the {_dims(cfg).strategy} run failed: {reason}")
    else:
        record_run(source, layout_args, run_dir)
    ref_args = [*base, *reference_overrides(cfg), f"train.run_dir={root / 'reference-run'}"]
    record_run(source, ref_args, ref_dir)
    return compare(run_dir, ref_dir, steps), tolerance(cfg)
