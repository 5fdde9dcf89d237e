"""The training loop: readable top to bottom, with named edges (log, evaluate, checkpoint).

`Trainer(cfg, model, task, run_dir=...)` trains any `nn.Module` on any task (see `tasks.py`);
`scaletrain.train.build.build_trainer(cfg)` makes one from a config for the CLI.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from scaletrain.config.load import to_yaml
from scaletrain.config.schema import Config
from scaletrain.errors import UserError
from scaletrain import hardware
from scaletrain.optim.param_groups import param_groups
from scaletrain.optim.registry import build_optimizer
from scaletrain.optim.schedules import apply_lr, effective_lr, lr_multiplier
from scaletrain.train import checkpoint as ckpt
from scaletrain.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from scaletrain.train.guard import Guard
from scaletrain.train.loop_state import ForwardClock, LoopState, Meter, Rollback
from scaletrain.train.report import plot_losses, read_metrics, write_report
from scaletrain.data.prefetch import Prefetcher
from scaletrain.models.family import ModelFamily
from scaletrain.parallel import faults
from scaletrain.parallel.dims import ParallelDims
from scaletrain.parallel.dist import DistInfo, shutdown
from scaletrain.parallel.layout import Layout, build_layout, wrap_optimizer
from scaletrain.train import budget as time_budget
from scaletrain.train import ranks, resume
from scaletrain.train.step import NonfiniteCheck, make_train_step, micro_batches, no_phase, plain_forward_backward
from scaletrain.train.shadow import Shadows, Swapped, trained_params
from scaletrain.train.telemetry import Telemetry
from scaletrain.train.trackers import Trackers

log = logging.getLogger(__name__)

# Batches that build faster than this (median, seconds) are built in the loop itself: a background
# thread would cost more than it hides (see scaletrain.data.prefetch; measured on the MLP preset,
# whose batches take 0.1-0.25 ms: 1.6 ms steps inline, 2.0-2.6 ms with the thread).
PREFETCH_INLINE_BELOW = 1e-3


def resolve_device(cfg: Config) -> torch.device:
    return torch.device(cfg.train.device or ("cuda" if torch.cuda.is_available() else "cpu"))


class Trainer:
    def __init__(self, cfg: Config, model: nn.Module, task, *, run_dir: Path,
                 model_spec: dict | None = None, sampler=None, extra_summary: dict | None = None,
                 dist_info: DistInfo | None = None, model_factory=None, run_files: dict[str, bytes] | None = None,
                 family: ModelFamily | None = None):
        self.cfg, self.model, self.task = cfg, model, task
        self.family = family  # the model's family (its parallel plan); None: a user's module
        self.dist_info = dist_info or DistInfo(device=resolve_device(cfg))
        self.model_factory = model_factory  # a fresh plain model, for consolidating sharded weights
        self.run_dir = Path(run_dir)
        self.model_spec = model_spec or {"name": "custom", "class": type(model).__qualname__}
        self.sampler = sampler  # callable(model) -> str: a generated sample for the report
        self.extra_summary = extra_summary or {}
        # {name: bytes} copied into the run folder once the start is checked (the tokenizer).
        self.run_files = run_files or {}
        self.device = self.dist_info.device
        self.scaler = torch.amp.GradScaler("cuda") if cfg.train.precision == "fp16" else None
        # train.precision as run ("auto" decided in _fit) and why: the log and summary.json say both.
        self.precision, self.precision_reason = cfg.train.precision, ""
        self._budget: time_budget.TimeBudget | None = None  # schedule.budget=time
        self.state = LoopState()
        # A loop-edge callback after every optimizer step: step_hook(trainer, step, loss) (verify).
        self.step_hook = None
        self._trackers: Trackers | None = None  # rank 0's log.trackers, opened with the run folder
        self._shadows: Shadows | None = None  # the EMA and best weights (train/shadow.py)
        self._shadow_note: str | None = None  # what a resume had to say about them

    @classmethod
    def from_config(cls, cfg: Config, model: nn.Module, task, *, model_spec: dict | None = None) -> "Trainer":
        """A trainer for a user's model and task (the Python API): the config's model and data
        sections are not used; the device and run folder are checked as for the CLI.

        Under `torchrun` (your own script, `torchrun --nproc-per-node N script.py`) every rank
        calls this: it joins the process group, rank 0 names and checks the run folder for all,
        and `parallel.strategy` (ddp, zero1, fsdp) lays the model out over the ranks. A
        `transformers` model is split as `model.name=hf` splits it: FSDP and activation
        checkpointing per decoder layer (its `_no_split_modules`)."""
        from scaletrain.models import family_of_module
        from scaletrain.parallel.dist import init_distributed, launched_by_torchrun
        from scaletrain.train.build import check_device, checked_run_dir  # build imports us

        device = check_device(cfg)
        dims = cfg.parallel.dims()  # the layout's kind (its fewest ranks when nproc does not say)
        if not launched_by_torchrun() and dims.world > 1:
            raise UserError(f"parallel.strategy: {dims.strategy} needs several processes, and the Python "
                            "API trains in the processes you start: launch your script with `torchrun "
                            "--nproc-per-node N your_script.py` (parallel.nproc starts processes only for "
                            "`scaletrain train`)")
        info = init_distributed(device.type, cfg.parallel.timeout_seconds)
        run_dir = ranks.on_main(checked_run_dir, cfg)
        return cls(cfg, model, task, run_dir=run_dir, model_spec=model_spec, dist_info=info,
                   family=family_of_module(model))

    # ---- set-up -------------------------------------------------------------------------------
    def _build_optimizer(self, layout: Layout) -> torch.optim.Optimizer:
        return layout_optimizer(layout, self.cfg.optim, self.global_batch(layout))

    def _micro_batches(self, position: int, layout: Layout) -> list[tuple[int, int]]:
        """(global position, size) of this rank's micro-batches for the step starting at `position`
        (step.micro_batches); `optim.name=gd` reads the whole training set per step in micro-batches
        of train.batch_size."""
        t = self.cfg.train
        samples = self.task.num_train_samples if self.cfg.optim.name == "gd" else None
        return micro_batches(position, t.batch_size, t.grad_accum, layout.dp_world, layout.dp_rank, samples)

    def global_batch(self, layout: Layout) -> int:
        if self.cfg.optim.name == "gd":  # true full-batch gradient descent: one step per epoch
            return self.task.num_train_samples
        return self.cfg.train.batch_size * self.cfg.train.grad_accum * layout.dp_world

    def _batch_reader(self, layout: Layout):
        """read(position) -> (the step's micro-batches, their weights or None) for the step starting
        at global batch `position`. For gd, each micro-batch's weight is its share of the samples in
        the exact full-batch mean (times dp, because data-parallel gradient sync averages ranks);
        a rank with no samples left in the last chunk still runs one, with weight 0, so every rank
        takes part in every gradient synchronization. Otherwise every micro-batch has
        train.batch_size samples at fixed offsets from `position`, worked out once."""
        train_batch = self.task.train_batch
        if self.cfg.optim.name == "gd":
            total = self.global_batch(layout)

            def read_gd(position: int) -> tuple[list, list[float]]:
                plan = self._micro_batches(position, layout)
                return ([train_batch(p, max(n, 1)) for p, n in plan],
                        [n / total * layout.dp_world for _, n in plan])

            return read_gd
        size = self.cfg.train.batch_size
        offsets = [p for p, _ in self._micro_batches(0, layout)]

        def read(position: int) -> tuple[list, None]:
            return [train_batch(position + o, size) for o in offsets], None

        return read

    def total_steps(self) -> int:
        """The run's step count: train.max_steps, or the count fitted to the time budget."""
        return self.state.fitted_steps or self.cfg.train.max_steps

    def _flops_per_unit(self) -> float:
        for name in ("flops_per_token", "flops_per_sample"):
            if hasattr(self.model, name):
                return float(getattr(self.model, name)())
        # A user's module: the usual 6 x parameters estimate (2 forward + 4 backward per weight).
        return 6.0 * sum(p.numel() for p in self.model.parameters())

    # ---- the loop -----------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train; under torchrun every rank calls this, and it leaves the process group on return."""
        try:
            return self._fit()
        finally:
            ckpt.drop_pending_save()  # after a failure only: a finished run has put its last one in place
            if self._trackers is not None:  # after a failure only: _finish gave them the summary
                self._trackers.finish(None)
            if self.dist_info.world > 1:
                shutdown()

    def _fit(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        main = self.dist_info.is_main
        wall_start = time.perf_counter()
        if t.threads:
            torch.set_num_threads(t.threads)
        # After the thread count: the measured matmul check is cached per thread count. Rank 0
        # decides for all (every rank must run the same precision).
        self.precision, self.precision_reason = ranks.on_main(hardware.choose_precision, t.precision, self.device)
        dims = ParallelDims.from_config(cfg.parallel, self.dist_info.world)
        if self.model_factory is None and dims.sharded_params and not dims.pp_enabled and main:
            # Rank 0 rebuilds the plain module at export from a meta-device skeleton taken before
            # sharding (no storage: a full copy of the weights kept through training would cost
            # rank 0 what fsdp saves; ranks.load_full_state re-ties tied weights).
            skeleton = ranks.meta_skeleton(self.model)
            self.model_factory = lambda: skeleton
        # The loss every layout's step computes (pipelining's schedule is built with it); a test's
        # planted NaN or spike is wrapped around it here, once (parallel/faults.py).
        self.loss_fn = self.task.loss
        self._faults = faults.Injector(self.dist_info.rank, lambda: self.state.step + 1) if faults.enabled() else None
        if self._faults is not None:
            self.loss_fn = self._faults.loss(self.loss_fn)
        layout = build_layout(self.model, self.family, cfg.parallel, self.dist_info, precision=self.precision,
                              compile=t.compile, loss_fn=self.loss_fn, dims=dims)
        self.layout = layout
        optimizer = self._build_optimizer(layout)
        self._shadows = Shadows(trained_params(layout.trained), ema_decay=t.ema_decay,
                                keep_best=bool(t.early_stopping))
        watchdog = ranks.Watchdog(cfg.parallel.timeout_seconds) if layout.distributed else None
        torch.manual_seed(t.seed)  # dropout and sampling; a resume restores the saved RNG instead

        # Every check of a resume comes before the run's first write: a refused start (another
        # config, a damaged checkpoint, other data) leaves the folder byte-identical.
        resume_from, damaged = self._resume(layout, optimizer)
        tel = ranks.main_only(self._open_run_folder, resume_from)
        if tel is None:  # the other ranks log nothing
            tel = Telemetry(self.run_dir, enabled=False, total_steps=self.total_steps(), unit=self.task.unit)
        if resume_from is not None and t.resume == "auto":  # a checkpoint set aside is back in place
            resume_from = self.run_dir / "checkpoints" / resume_from.name.removeprefix(".old-")
        st = self.state
        for problem in damaged:
            tel.message(f"warning: skipped damaged checkpoint {problem}")
        if self._shadow_note:
            tel.message(self._shadow_note)
        if resume_from is not None:
            tel.message(f"resumed from {resume_from} at step {st.step}")
        if layout.distributed:
            tel.message(f"{self.dist_info.world} ranks, parallel.strategy={layout.dims.strategy}, "
                        f"global batch {self.global_batch(layout)} samples")
        tel.message(f"precision: {self.precision} ({self.precision_reason})")
        self._warn_slow_bf16(tel)
        self._budget = self._make_budget(layout, wall_start)
        self._state_bytes: int | None = None
        self._guard = Guard(cfg.guard, layout.distributed)
        try:
            with tel:
                stopped_by = self._loop(layout, optimizer, tel, wall_start)
                # The last checkpoint holds the last weights (a resume with more steps continues
                # them); the best weights, if restored, are what the final evaluation and export see.
                tel.flush()  # metrics.jsonl holds every record up to a checkpoint (a resume keeps them)
                self._save(optimizer)
                ckpt.finish_pending_save()  # checkpoint.async_save: the last one is in place at the end
                self._restore_best(tel)
                began = time.perf_counter()
                final = self._evaluate(tel, t.final_eval_batches, final=True)
                self._final_eval_seconds = time.perf_counter() - began
        except RuntimeError as exc:  # a collective that timed out, or a peer that died
            if watchdog is None:
                raise
            raise watchdog.failure(st.step, exc, cfg.parallel.timeout_seconds) from None
        return self._finish(final, stopped_by, wall_start, optimizer)

    def _resume(self, layout: Layout, optimizer) -> tuple[Path | None, list[str]]:
        """(checkpoint resumed from, damaged newer ones skipped), after every check a resume makes;
        writes nothing. Rank 0 checks the files (resume.find_checkpoint), every rank loads the
        model, optimizer and RNG, and the task checks the saved data position against its data."""
        t = self.cfg.train
        if not t.resume:
            return None, []
        resume_from, damaged = ranks.on_main(resume.find_checkpoint, t.resume, self.run_dir, self.model_spec)
        if resume_from is None:  # resume=auto on a run that has no checkpoint yet: a fresh start
            return None, damaged
        configured = [g.get("base_lr") for g in optimizer.param_groups]
        groups = self._shadows.load_groups()
        saved = ckpt.load_checkpoint(resume_from, layout.trained, optimizer, verified=True,  # pp: this rank's stage
                                     model_spec=self.model_spec, whole_model=layout.trained is layout.model,
                                     extra=groups)
        self._shadow_note = self._shadows.loaded(groups)
        for group, base_lr in zip(optimizer.param_groups, configured):
            if base_lr is not None:  # the config's lr wins over the checkpoint's (a resume may change it)
                group["base_lr"] = base_lr
        saved_step = saved.pop("step", None)
        data_state = saved.pop("data", None)
        check = getattr(self.task, "check_data_state", None)
        if data_state is not None and check is not None:
            check(data_state)
        step = ckpt.checkpoint_step(resume_from)
        self.state = LoopState(step=int(saved_step) if step is None else step, **saved)
        if layout.distributed:  # every rank has read the checkpoint before rank 0 moves anything
            torch.distributed.barrier()
        return resume_from, damaged

    def _open_run_folder(self, resume_from: Path | None) -> Telemetry:
        """Rank 0's first writes, once the start is checked: the folder, config.yaml, the run's files
        and the log. A fresh start in a folder that holds this run (one that never saved a
        checkpoint: see resume.check_folder) drops that run's curves."""
        cfg, t, run_dir = self.cfg, self.cfg.train, self.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        if t.resume == "auto":
            ckpt.recover_replaced(run_dir / "checkpoints")
        if resume_from is None:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
            shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
        write_text_atomic(run_dir / "config.yaml", _config_file_text(cfg))
        for name, data in self.run_files.items():
            if not ((run_dir / name).is_file() and (run_dir / name).read_bytes() == data):
                write_bytes_atomic(run_dir / name, data)
        self._trackers = Trackers(cfg.log.trackers, run_dir, config=cfg.model_dump(mode="json"),
                                  project=cfg.log.project, resume=resume_from is not None)
        return Telemetry(run_dir, enabled=True, total_steps=self.total_steps(), start_step=self.state.step,
                         unit=self.task.unit, trackers=self._trackers, progress=cfg.log.progress)

    def _loop(self, layout: Layout, optimizer, tel: Telemetry, wall_start: float) -> str:
        step = self._train_step(layout, optimizer)
        read = self._batch_reader(layout)
        meter = Meter()
        while True:
            st = self.state  # a new object after a rollback
            start_step, start_position, per_step = st.step, st.position, self.global_batch(layout)

            def produce(step: int, start_step=start_step, start_position=start_position, per_step=per_step):
                return read(start_position + (step - start_step) * per_step)

            if self._faults is not None:
                produce = self._faults.batches(produce)
            # The batches of the next steps are read in a background thread while this one trains;
            # they are a pure function of the step, so prefetching never changes which batch comes.
            prefetch = Prefetcher(produce, depth=2, inline_below=PREFETCH_INLINE_BELOW)
            try:
                return self._steps(layout, optimizer, tel, wall_start, meter, prefetch, step)
            except Rollback:
                continue  # the state is the checkpoint's now: read batches from its position
            finally:
                prefetch.close()

    def _train_step(self, layout: Layout, optimizer):
        """The run's step(batches, weights, want_norm, before_zero_grad) -> (loss, norm, reason):
        `make_train_step` with everything that is decided once per run bound to it (the layout's
        forward_backward, the trained parameters, the guard, the straggler clock)."""
        t = self.cfg.train
        params = [p for p in layout.trained.parameters() if p.requires_grad]
        # Distributed: the forward passes are timed (a rank's busy time, see _rank_times).
        self._clock = ForwardClock() if layout.distributed else None
        forward_backward = layout.forward_backward or plain_forward_backward(
            layout.module, self.loss_fn, device=self.device, autocast=layout.autocast,
            grad_sync=layout.grad_sync if layout.syncs_gradients else None, scaler=self.scaler,
            phase=self._clock or no_phase)
        guard = self._guard.verdict if self.cfg.guard.action != "off" else None
        step = make_train_step(forward_backward, optimizer, layout, params=params, grad_clip=t.grad_clip,
                               guard=guard, scaler=self.scaler, nonfinite_check=NonfiniteCheck())
        if self._faults is not None:  # a test's kill, stall, straggler or bad loss, at the step they name
            step = self._faults.step(step)
        self._params = params
        return step

    def _steps(self, layout, optimizer, tel, wall_start, meter, prefetch, step) -> str:
        cfg, t, st = self.cfg, self.cfg.train, self.state
        checking = cfg.guard.action != "off"
        clock = self._clock
        per_step, dp, distributed = self.global_batch(layout), layout.dp_world, layout.distributed
        # What is fixed for the run is looked up once: on a 1 ms step (the MLP preset) every
        # attribute walk and call between two steps shows (benchmarks/overhead.py).
        get, units_of, hook, guard = prefetch.get, self.task.units, self.step_hook, self._guard
        ema = self._shadows.ema is not None
        perf_counter, log_every = time.perf_counter, cfg.log.every
        deadline = wall_start + 60 * t.max_minutes if t.max_minutes else None
        total = self.total_steps()
        s = cfg.schedule
        name, warmup, min_ratio, decay_fraction, cooldown = (s.name, s.warmup_steps, s.min_lr_ratio,
                                                             s.decay_fraction, s.cooldown)

        while st.step < total:
            step_began = perf_counter()
            apply_lr(optimizer, lr_multiplier(name, st.step, total, warmup, min_ratio, decay_fraction, cooldown)
                     * st.lr_scale)
            waited = perf_counter()
            batches, weights = get(st.step)
            meter.data_seconds += perf_counter() - waited
            st.position += per_step
            log_step = (st.step + 1) % log_every == 0 or st.step + 1 == total
            measure_hook = self._measure_hook(optimizer) if self._state_bytes is None else None
            if clock is not None:  # this rank's own time: until its first forward, and its forwards
                clock.start(step_began)
            loss, grad_norm, reason = step(batches, weights, log_step, measure_hook)
            if clock is not None:
                meter.busy_seconds += clock.seconds
            bad = reason is not None
            if bad:  # the guard dropped this step's update
                stop = self._handle_bad_step(reason, optimizer, tel)
                if stop:
                    return stop
            elif checking:
                guard.good()
            st.step += 1
            if ema and not bad:
                self._shadows.after_step(st.step)
            if hook is not None:
                hook(self, st.step, layout.global_mean(loss))
            if weights:  # gd: the step's share of the training set
                units = per_step * units_of(batches[0][0]) // len(batches[0][1])
            else:
                units = sum(units_of(x) for x, _ in batches) * dp
            st.units_seen += units
            if not bad:  # a dropped step's loss (NaN, a spike) stays out of the logged mean
                meter.add(loss, units)
            if self._budget is not None:
                self._budget_fit(tel, lambda: self._budget.after_step(st.step))
                if self._budget.wants_probe:
                    with meter.paused():
                        self._budget_probe()
                total = self.total_steps()

            time_up = deadline is not None and perf_counter() > deadline
            if distributed and deadline is not None:  # rank 0's clock decides for all (one
                time_up = bool(ranks.on_main(lambda: time_up))  # broadcast per step, only when set)
            last = st.step >= total or time_up
            if st.step % log_every == 0 or last:
                mean_loss = self._log_window(layout, optimizer, tel, meter, grad_norm)
                if mean_loss is not None and not math.isfinite(mean_loss):
                    tel.message(f"loss is {mean_loss} at step {st.step}: stopping")
                    return "non_finite_loss"
            if time_up:
                tel.message(f"train.max_minutes={t.max_minutes} reached at step {st.step}: stopping")
                return "max_minutes"
            if t.eval_every and st.step % t.eval_every == 0 and not last:
                with meter.paused():
                    began = time.perf_counter()
                    stop = self._evaluate(tel, t.eval_batches)
                    if self._budget is not None:  # a refit, before this step's checkpoint
                        seconds, samples = time.perf_counter() - began, self._budget.plan.eval_samples
                        self._budget_fit(tel, lambda: self._budget.evaluated(st.step, seconds, samples))
                        total = self.total_steps()
                    if stop:
                        return "early_stopping"
            if t.checkpoint_every and st.step % t.checkpoint_every == 0 and not last:
                with meter.paused():
                    began = time.perf_counter()
                    tel.flush()
                    self._save(optimizer)
                    if self._budget is not None:
                        self._budget.checkpointed(time.perf_counter() - began)
        return "max_steps"

    def _log_window(self, layout, optimizer, tel: Telemetry, meter: Meter, grad_norm) -> float | None:
        """The train record of the steps since the last one (metrics.jsonl, trackers, the log);
        returns their mean loss, or None for a window of skipped steps only (it has none)."""
        st = self.state
        steps_in_window, data_seconds, busy = len(meter.losses), meter.data_seconds, meter.busy_seconds
        mean_loss, seconds, window_units = meter.read(  # one sync per window
            layout.global_mean if layout.distributed else None)
        st.train_seconds += seconds
        record = {"loss": mean_loss, "lr": optimizer.param_groups[0]["lr"]}
        if grad_norm is not None:  # absent only on a step cut short by max_minutes
            record["grad_norm"] = float(grad_norm)
        record[f"{self.task.unit}_per_second"] = window_units / max(seconds, 1e-9)
        record["elapsed"] = st.train_seconds
        record["data_wait_fraction"] = min(1.0, data_seconds / max(seconds, 1e-9))
        if st.skipped_steps:
            record["skipped_steps"] = st.skipped_steps
        if layout.distributed:
            self._rank_times(record, seconds / max(steps_in_window, 1), busy / max(steps_in_window, 1), tel)
        tel.log_train(st.step, record)
        return mean_loss if steps_in_window else None

    # ---- guard rails -------------------------------------------------------------------------
    def _handle_bad_step(self, reason: str, optimizer, tel: Telemetry) -> str | None:
        """Skip, roll back or stop after a dropped update; return a stop reason or None."""
        g, st = self.cfg.guard, self.state
        st.skipped_steps += 1  # the step still counts (its data is consumed); only its update is dropped
        too_many = self._guard.bad()
        if g.action == "stop" or too_many:
            why = "guard.action=stop" if g.action == "stop" else \
                f"{self._guard.bad_in_a_row} bad steps in a row (guard.max_consecutive={g.max_consecutive})"
            tel.message(f"error: step {st.step + 1}: {reason}; stopping ({why})")
            return "non_finite_loss"
        if g.action == "rollback":
            ckpt.finish_pending_save()  # an async save in flight is the newest to roll back to
            found = ranks.on_main(lambda: (ckpt.list_checkpoints(self.run_dir / "checkpoints") or [None])[-1])
            if found is not None:
                self._rollback(found, optimizer, tel, reason)
                raise Rollback
            tel.message(f"warning: step {st.step + 1}: {reason}; no checkpoint to roll back to: update skipped")
            return None
        tel.message(f"warning: step {st.step + 1}: {reason}; update skipped (guard.action=skip)")
        return None

    def _rollback(self, path: Path, optimizer, tel: Telemetry, reason: str) -> None:
        st = self.state
        trained = self.layout.trained
        groups = self._shadows.load_groups()
        saved = ckpt.load_checkpoint(path, trained, optimizer, model_spec=self.model_spec,
                                     whole_model=trained is self.layout.model, extra=groups)
        self._shadows.loaded(groups)
        saved.pop("step", None)
        saved.pop("data", None)
        keep = {"skipped_steps": st.skipped_steps, "rollbacks": st.rollbacks + 1,
                "lr_scale": st.lr_scale * self.cfg.guard.lr_factor}
        saved.update(keep)
        bad_step = st.step + 1
        self.state = LoopState(step=int(path.name.split("_")[1]), **saved)
        if self._budget is not None:  # the checkpoint's count: the schedule it was saved with
            self._budget.fitted_steps, self._budget.fits = self.state.fitted_steps, self.state.budget_fits
        tel.message(f"warning: step {bad_step}: {reason}; rolled back to {path.name}, learning rate x "
                    f"{self.state.lr_scale:g} (guard.action=rollback)")

    def _rank_times(self, record: dict, step_seconds: float, busy_seconds: float, tel: Telemetry) -> None:
        """Every rank's mean step time and busy time of the window (`rank_step_seconds`,
        `rank_busy_seconds`). Collectives make every rank's step as long as the slowest one's, so a
        straggler shows in its busy time — what it spends before the step's first gradient
        synchronization (data, host work, forward): a rank busier than the median by
        parallel.straggler_factor is flagged in the log and in metrics.jsonl (`stragglers`)."""
        record["rank_step_seconds"] = ranks.gather_floats(step_seconds)
        busy = ranks.gather_floats(busy_seconds)
        record["rank_busy_seconds"] = busy
        slow = ranks.stragglers(busy, self.cfg.parallel.straggler_factor)
        record["stragglers"] = slow
        if slow:
            tel.message(f"warning: straggler rank(s) {slow} at step {self.state.step}: busy seconds per "
                        f"step by rank {[round(b, 3) for b in busy]}, more than "
                        f"parallel.straggler_factor={self.cfg.parallel.straggler_factor:g} x the others' median")

    def _measure_hook(self, optimizer):
        """Run once, after the first optimizer step and before gradients are dropped: the
        parameters, gradients and optimizer state this rank holds, from the tensors themselves."""
        def measure() -> None:
            params = self._params
            self._state_bytes = ranks.model_state_bytes(params, ranks.grad_bytes(params), optimizer)

        return measure

    def _make_budget(self, layout: Layout, wall_start: float) -> time_budget.TimeBudget | None:
        """schedule.budget=time: the run's fits of its step count (train/budget.py)."""
        cfg, t = self.cfg, self.cfg.train
        if cfg.schedule.budget != "time":
            return None
        eval_bs = t.eval_batch_size or t.batch_size
        plan = time_budget.Plan(
            budget_s=60 * t.max_minutes, max_steps=t.max_steps, warmup_steps=cfg.schedule.warmup_steps,
            samples_per_step=self.global_batch(layout), eval_every=t.eval_every,
            eval_samples=time_budget.eval_samples(self.task, t.eval_batches, eval_bs),
            final_eval_samples=time_budget.eval_samples(self.task, t.final_eval_batches, eval_bs),
            checkpoint_every=t.checkpoint_every, sample_tokens=cfg.log.sample_tokens if self.sampler else 0)
        return time_budget.TimeBudget(plan, start=wall_start, fitted_steps=self.state.fitted_steps,
                                      fits=self.state.budget_fits)

    def _budget_fit(self, tel: Telemetry, fit) -> None:
        """Run one of the budget's fits (`fit() -> log line or None`): on rank 0, which decides for
        all while the count is still open (one broadcast per step then); keep the count in the state."""
        b, st = self._budget, self.state
        b.checkpoint_bytes = self._state_bytes or 0
        if self.layout.distributed and not b.settled:
            line, b.fitted_steps, b.fits = ranks.on_main(lambda: (fit(), b.fitted_steps, b.fits))
        else:
            line = fit()
        if (b.fitted_steps, b.fits) != (st.fitted_steps, st.budget_fits):
            st.fitted_steps, st.budget_fits = b.fitted_steps, b.fits
            tel.set_total(self.total_steps())
        if line:
            tel.message(line)

    def _budget_probe(self) -> None:
        """Time one evaluation batch for the budget's fit (every rank: the forward may be a collective)."""
        t = self.cfg.train
        eval_bs = t.eval_batch_size or t.batch_size
        model = self.layout.full_model()
        began = time.perf_counter()
        model.eval()
        self.task.evaluate(model, batches=1, batch_size=eval_bs, device=self.device, autocast=self.layout.autocast)
        model.train()
        self._budget.probed(time.perf_counter() - began, time_budget.eval_samples(self.task, 1, eval_bs))

    def _warn_slow_bf16(self, tel: Telemetry) -> None:
        """CPUs without native bf16 (AVX2-only, no AVX512-BF16/AMX) run bf16 matmuls ~50x slower."""
        if self.device.type != "cpu" or self.precision != "bf16":
            return
        bf16 = hardware.matmul_peak_flops(torch.bfloat16, "cpu")
        fp32 = hardware.matmul_peak_flops(torch.float32, "cpu")
        if bf16 < fp32:
            tel.message(f"warning: this CPU multiplies bf16 at {bf16 / 1e9:.1f} GFLOP/s against "
                        f"{fp32 / 1e9:.0f} GFLOP/s in fp32 (no native bf16): train.precision=fp32 is faster")

    # ---- loop edges ---------------------------------------------------------------------------
    def _evaluate(self, tel: Telemetry, batches: int, final: bool = False) -> dict | bool:
        """Evaluate; on the final call return the metrics, otherwise whether to stop early."""
        st = self.state
        t = self.cfg.train
        model = self.layout.full_model()
        model.eval()
        # Every rank evaluates the same batches: under FSDP/TP the forward is a collective.
        metrics = self.task.evaluate(model, batches=batches,
                                     batch_size=t.eval_batch_size or t.batch_size,
                                     device=self.device, autocast=self.layout.autocast)
        model.train()
        tel.log_eval(st.step, metrics)
        if final:
            return metrics
        st.evals.append({"step": st.step, "val_loss": metrics["val_loss"]})
        if metrics["val_loss"] < st.best_val:
            st.best_val, st.best_step, st.bad_evals = metrics["val_loss"], st.step, 0
            self._shadows.after_improvement()
        else:
            st.bad_evals += 1
        patience = self.cfg.train.early_stopping
        if patience and st.bad_evals >= patience:
            tel.message(f"early stopping at step {st.step}: val_loss has not improved for "
                        f"{st.bad_evals} evaluations (best {st.best_val:.4f} at step {st.best_step})")
            return True
        return False

    def _save(self, optimizer: torch.optim.Optimizer) -> None:
        state = {k: v for k, v in vars(self.state).items() if k != "step"}
        state["model"] = self.model_spec  # a resume with another architecture is refused by name
        data_state = getattr(self.task, "data_state", None)
        if data_state is not None:  # the loader's position, seed and data fingerprint
            state["data"] = data_state(self.state.position)
        ckpt.save_checkpoint(self.run_dir / "checkpoints", self.state.step, self.layout.trained, optimizer,
                             state, self.cfg.checkpoint.keep_last, async_save=self.cfg.checkpoint.async_save,
                             extra=self._shadows.groups())

    def _finish(self, final: dict, stopped_by: str, wall_start: float, optimizer) -> dict:
        cfg, st, unit = self.cfg, self.state, self.task.unit
        model = self.layout.full_model()
        sample, sample_error = None, None
        if self.sampler:  # every rank: FSDP/TP forward is collective
            try:
                sample = self.sampler(model)
            except Exception as exc:  # noqa: BLE001 - the report's sample must not cost the run its weights
                sample_error = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
        ranks.export_full_model(model, self.model_factory or self._no_factory,
                                self.run_dir / "model.safetensors", self.layout.full_model_sharded,
                                spec=self.model_spec)
        ema_metrics = self._export_ema(model)
        state_bytes = ranks.gather_objects(self._state_bytes)
        # Every rank's own peak (after the export, which gathers the whole model on rank 0): a
        # memory budget holds per process, and rank 0 is not always the largest.
        peaks = ranks.gather_objects(hardware.peak_memory_bytes(self.device.type))
        if not self.dist_info.is_main:
            return {}
        write_json_atomic(self.run_dir / "model_config.json", self.model_spec)
        records = read_metrics(self.run_dir / "metrics.jsonl")
        train_losses = [r["loss"] for r in records if r.get("split") == "train"]
        throughput = st.units_seen / st.train_seconds if st.train_seconds else 0.0
        # MFU against the peak of the precision the matmuls ran at; bf16 only where it is native
        # (an emulated bf16 "peak" is no ceiling: MFU against it can exceed 1).
        precision_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)
        if precision_dtype == torch.bfloat16 and not hardware.bf16_is_native(self.device):
            precision_dtype = torch.float32
        world = self.dist_info.world  # each rank's peak, at its own thread count, times the ranks
        peak = hardware.matmul_peak_flops(precision_dtype, self.device.type) * world
        flops = self._flops_per_unit()
        if flops * throughput > peak:  # the cached peak was measured on a busy machine: measure again
            peak = hardware.matmul_peak_flops(precision_dtype, self.device.type, refresh=True) * world
        summary = {
            "train_loss": train_losses[-1] if train_losses else None,
            **{k: v for k, v in final.items()},
            "steps": st.step,
            f"{unit}_per_second": throughput,
            "mfu": hardware.mfu(flops, throughput, peak),
            f"flops_per_{unit[:-1]}": flops,
            "matmul_peak_flops": peak,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "world_size": world,
            "parallel_strategy": self.layout.dims.strategy,
            "global_batch_size": self.global_batch(self.layout),
            "model_state_bytes_per_rank": state_bytes,
            "peak_memory_bytes": peaks[0],
            "peak_memory_bytes_per_rank": peaks,
            "train_seconds": st.train_seconds,
            "wall_seconds": time.perf_counter() - wall_start,
            "stopped_by": stopped_by,
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "mfu_peak_dtype": str(precision_dtype).removeprefix("torch."),
            "best_step": st.best_step if st.best_step >= 0 else st.step,
            "exported_step": self._exported_step,  # model.safetensors holds the weights of this step
            **ema_metrics,
            **self.extra_summary,
        }
        if self._budget is not None:
            summary["budget"] = {"max_minutes": cfg.train.max_minutes, "fitted_steps": st.fitted_steps,
                                 "fits": self._budget.history, "final_eval_seconds": self._final_eval_seconds}
        if sample is not None:
            summary["sample"] = sample
        if sample_error is not None:
            summary["sample_error"] = sample_error
        write_json_atomic(self.run_dir / "summary.json", summary)
        self._trackers.finish(summary)
        # The weights and the summary are written: a failing plot or report is only a warning.
        for name, write in (("loss.png", lambda: plot_losses(records, self.run_dir / "loss.png",
                                                             title=f"{cfg.name}: loss")),
                            ("report.md", lambda: write_report(self.run_dir, config=cfg.model_dump(mode="json"),
                                                               summary=summary, sample=sample))):
            try:
                write()
            except Exception as exc:  # noqa: BLE001
                log.warning("warning: could not write %s (%s: %s)", self.run_dir / name, type(exc).__name__, exc)
        return summary

    # ---- the EMA and best weights (train/shadow.py) --------------------------------------------
    def _restore_best(self, tel: Telemetry) -> None:
        """train.early_stopping: the weights of the best evaluation go into model.safetensors. The
        last weights are evaluated first, as every evaluation was, unless the last step was one."""
        st, t = self.state, self.cfg.train
        self._exported_step = st.step
        if not t.early_stopping or not st.evals:
            return
        if st.evals[-1]["step"] != st.step:
            self._evaluate(tel, t.eval_batches)  # may make the last weights the best
        if self._shadows.best is not None and st.best_step != st.step:
            self._shadows.restore_best()
            self._exported_step = st.best_step
            tel.message(f"early stopping: restored the weights of step {st.best_step} (val_loss {st.best_val:.4f}, "
                        f"the best evaluation) for model.safetensors")

    def _export_ema(self, model: nn.Module) -> dict:
        """train.ema_decay: model_ema.safetensors beside model.safetensors, and its validation
        metrics for the summary (`ema_val_loss`, ...); every rank takes part (collectives)."""
        ema = self._shadows.ema
        if ema is None:
            return {}
        t = self.cfg.train
        with Swapped(ema):
            model.eval()
            metrics = self.task.evaluate(model, batches=t.final_eval_batches, batch_size=t.eval_batch_size or t.batch_size,
                                         device=self.device, autocast=self.layout.autocast)
            model.train()
            ranks.export_full_model(model, self.model_factory or self._no_factory,
                                    self.run_dir / "model_ema.safetensors", self.layout.full_model_sharded,
                                    spec=self.model_spec)
        return {f"ema_{k}": v for k, v in metrics.items()}

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights as plain CPU tensors on every rank (a collective when sharded)."""
        return self.layout.full_state_dict()

    def _no_factory(self) -> nn.Module:
        raise RuntimeError("a sharded model needs Trainer(model_factory=...) to be exported")


def layout_optimizer(layout: Layout, o, global_batch: int) -> torch.optim.Optimizer:
    """The optimizer `o` (the optim section) over what this rank trains (pp: its stage), wrapped
    as the layout needs (ZeRO-1)."""
    if layout.pipeline is not None:  # grouped as the whole model groups them (a tied head is the embedding)
        groups = param_groups(layout.pipeline.whole, o.weight_decay, o.lr_multipliers, trained=layout.trained)
    else:
        groups = param_groups(layout.model, o.weight_decay, o.lr_multipliers)
    # optim.lr_scaling adapts the lr tuned at optim.reference_batch to this run's global batch.
    lr = effective_lr(o, global_batch)

    def factory(groups):
        return build_optimizer(o.name, groups, lr=lr, weight_decay=o.weight_decay,
                               betas=tuple(o.betas), eps=o.eps, momentum=o.momentum, fused=o.fused,
                               options=getattr(o, o.name, None))  # the optim.<name> section

    return wrap_optimizer(layout, groups, factory)


def _config_file_text(cfg: Config) -> str:
    # run_dir is left empty so that `scaletrain train RUN/config.yaml` makes a new run folder
    # instead of refusing to overwrite this one; everything else is the resolved config.
    data = cfg.model_copy(deep=True)
    data.train.run_dir = None
    data.train.resume = False
    return (f"# resolved config of the run in this folder; `scaletrain train {'<this file>'}` "
            "reproduces it in a new folder\n" + to_yaml(data))
