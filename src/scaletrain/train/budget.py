"""`schedule.budget=time`: the run's step count fitted to `train.max_minutes`, so that the
learning-rate decay ends when the time does (budget-aware training, as in "Cramming", Geiping &
Goldstein 2023: time the first steps, then fix the total once).

How a run uses it (the trainer holds one `TimeBudget`):

1. Steps are timed from the end of the first one (which allocates and, under `train.compile`,
   compiles). The fit comes after at least MIN_TIMED_STEPS timed steps, at the end of the warm-up
   or once FIT_FRACTION of the budget went into timing, whichever is first: during the warm-up the
   lr does not depend on the total, so the steps before the fit follow the schedule whatever the
   total turns out to be (without a warm-up they follow train.max_steps' until the fit). After the
   first step, one evaluation batch is timed (a probe: the final evaluation of the whole validation
   split can be a tenth of the budget, and its cost per sample is not the training step's).
2. The fit fixes the total N: the largest N (<= train.max_steps) whose remaining steps,
   evaluations, checkpoints and final evaluation fit the time left, less a reserve for the
   end-of-run work (`fit_steps`). A checkpoint is assumed to cost its state's bytes at
   CHECKPOINT_BYTES_PER_S until one was timed.
3. Right after every intermediate evaluation once REFIT_FRACTION of the budget is spent (before
   that step's checkpoint, so that the checkpoint holds the result), N is fitted again with what was
   measured since the last fit: the steps' mean time over that window and the evaluation's own
   cost. A machine whose speed drifts during the run (a shared VM's cores slowed by a fifth for
   minutes was measured here) then still ends its decay with the budget instead of being cut off
   by the guard before the learning rate reaches its end.

N is saved in every checkpoint (`LoopState.fitted_steps`, with `LoopState.budget_fits`, the fits
made): a resumed run continues with the saved N and fits no more, so its lr schedule is the
uninterrupted run's up to the checkpoint (with a fixed clock, as in the tests, every refit gives
the count the first ones did, so the two runs match bit for bit). A resumed run has train.max_minutes
again as its guard. The guard still stops a run that falls behind (a machine that slows down during
the run) when the budget is spent.

Durations go through a `Clock`; a test sets `budget.CLOCK = FixedClock(...)`, which gives every
step, evaluated sample and checkpoint a fixed duration: fits then depend on nothing measured, and a
resumed run is bit for bit the uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

MIN_TIMED_STEPS = 5
FIT_FRACTION = 0.03  # timing before the first fit stops at this share of the budget
REFIT_FRACTION = 0.1  # refits wait for an evaluation after this share of the budget
EVAL_SAMPLE_FRACTION = 1 / 3  # an evaluated sample's cost / a trained one's, until an evaluation is timed
# Kept free at the end of the budget for the export, the report and a slower stretch of steps.
RESERVE_FRACTION = 0.02
RESERVE_MIN_S = 2.0
CHECKPOINT_BYTES_PER_S = 2e8  # a checkpoint's cost before one was timed: state bytes at this rate


@dataclass(frozen=True)
class Plan:
    """What a fit knows of the run: the budget and the config's loop edges."""

    budget_s: float  # train.max_minutes in seconds
    max_steps: int  # train.max_steps: the largest count a fit may choose
    warmup_steps: int
    samples_per_step: int  # global batch
    eval_every: int  # 0: no evaluation before the final one
    eval_samples: int  # samples one intermediate evaluation reads
    final_eval_samples: int  # ... the final one
    checkpoint_every: int
    sample_tokens: int = 0  # the end-of-run sample's tokens (log.sample_tokens when there is a sampler)


@dataclass(frozen=True)
class Costs:
    """Seconds per step, per evaluated sample and per checkpoint."""

    step: float
    eval_sample: float
    checkpoint: float


def edges_between(first: int, last: int, every: int) -> int:
    """How many steps s with first <= s < last are multiples of `every` (> 0): the loop edges
    (evaluations, checkpoints) still to come; the run's last step has none of its own."""
    if every <= 0 or last <= first:
        return 0
    return (last - 1) // every - (first - 1) // every


def remaining_seconds(total: int, done: int, plan: Plan, costs: Costs, *, evaluated: bool = False) -> float:
    """Seconds the run needs to go from `done` steps to `total` and finish: the steps, the loop
    edges still to come (step `done`'s too: its evaluation unless `evaluated`, its checkpoint,
    which comes after the evaluation), the final evaluation and the end-of-run work."""
    first = max(done, 1)
    evals = edges_between(first + evaluated, total, plan.eval_every) * plan.eval_samples * costs.eval_sample
    saves = edges_between(first, total, plan.checkpoint_every) * costs.checkpoint
    # The end: the final evaluation, the report's sample (a forward per token, each at most one
    # evaluated sample's cost) and the final checkpoint.
    end = (plan.final_eval_samples + plan.sample_tokens) * costs.eval_sample + costs.checkpoint
    return (total - done) * costs.step + evals + saves + end


def reserve_seconds(budget_s: float) -> float:
    return max(RESERVE_MIN_S, RESERVE_FRACTION * budget_s)


def fit_steps(plan: Plan, costs: Costs, *, done: int, elapsed_s: float, evaluated: bool = False) -> int:
    """The largest total N with done <= N <= plan.max_steps whose remaining work fits the budget
    left after `elapsed_s`, less the reserve; `done` when not even that fits. The remaining work
    grows with N, so a bisection finds it."""
    left = plan.budget_s - elapsed_s - reserve_seconds(plan.budget_s)

    def fits(n: int) -> bool:
        return remaining_seconds(n, done, plan, costs, evaluated=evaluated) <= left

    lo, hi = done, max(done, plan.max_steps)
    if not fits(lo):
        return done
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


class Clock:
    """Durations as measured (wall clock). A test replaces it with a `FixedClock`."""

    def now(self) -> float:
        return time.perf_counter()

    def steps(self, seconds: float, steps: int) -> float:
        """Seconds per step, from `seconds` measured over `steps` steps."""
        return seconds / max(steps, 1)

    def evaluation(self, seconds: float, samples: int) -> float:
        """Seconds per evaluated sample, from an evaluation of `samples` that took `seconds`."""
        return seconds / max(samples, 1)

    def checkpoint(self, seconds: float) -> float:
        return seconds

    def elapsed(self, start: float) -> float:
        return self.now() - start


class FixedClock(Clock):
    """Every step takes `step` seconds, every evaluated sample `eval_sample`, every checkpoint
    `checkpoint`, and `startup` seconds passed before the first step: fits that depend on nothing
    measured (tests). It counts what the run did to tell the elapsed time."""

    def __init__(self, step: float, eval_sample: float = 0.0, checkpoint: float = 0.0, startup: float = 0.0):
        self.step, self.eval_sample, self.checkpoint_s, self.startup = step, eval_sample, checkpoint, startup
        self.spent = startup

    def steps(self, seconds: float, steps: int) -> float:
        return self.step

    def evaluation(self, seconds: float, samples: int) -> float:
        return self.eval_sample

    def checkpoint(self, seconds: float) -> float:
        return self.checkpoint_s

    def elapsed(self, start: float) -> float:
        return self.spent


CLOCK: Clock = Clock()  # what a new TimeBudget times with


class TimeBudget:
    """One run's fits of its step count. The trainer calls `after_step(step)` after each optimizer
    step, `evaluated(...)` / `checkpointed(...)` after those loop edges, and reads `total()`."""

    def __init__(self, plan: Plan, *, start: float, fitted_steps: int = 0, fits: int = 0,
                 checkpoint_bytes: int = 0, clock: Clock | None = None):
        self.plan, self.clock = plan, clock or CLOCK
        self.start = start  # when the run's budget began (the trainer's wall_start)
        self.fitted_steps, self.fits = fitted_steps, fits
        self.resumed = bool(fitted_steps)  # a resumed run keeps the saved count: no further fit
        self.checkpoint_bytes = checkpoint_bytes
        self._timed_from: float | None = None  # when the timed steps began
        self._timed_first = 0  # the step count then
        self._edges = 0.0  # seconds spent in loop edges since then (not step time)
        self._eval_sample: float | None = None
        self._checkpoint: float | None = None
        self.history: list[dict] = []  # each fit: step, total and the costs it used

    @property
    def wants_probe(self) -> bool:
        """Whether the trainer should time one evaluation batch now (`probed`): once, before the
        first fit. Every rank decides the same (the fit count is shared), so a probe that is a
        collective (FSDP, TP) runs on all of them."""
        return not self.settled and self.fits == 0 and self._eval_sample is None and self._timed_from is not None

    def probed(self, seconds: float, samples: int) -> None:
        """One evaluation batch of `samples` took `seconds` (not step time)."""
        self._add_edge(seconds)
        self._eval_sample = self.clock.evaluation(seconds, samples)
        if isinstance(self.clock, FixedClock):
            self.clock.spent += samples * self.clock.eval_sample

    @property
    def settled(self) -> bool:
        """No fit is left to make: a resumed run (it keeps its saved count), or one fitted without evaluations."""
        return self.resumed or (self.fits >= 1 and self.plan.eval_every == 0)

    def total(self) -> int:
        """The step count the schedule and the loop use: the fitted one, else train.max_steps."""
        return self.fitted_steps or self.plan.max_steps

    def after_step(self, step: int) -> str | None:
        """After optimizer step number `step` (counted from 1): a log line when it fitted."""
        if isinstance(self.clock, FixedClock):
            self.clock.spent += self.clock.step
        if self.fits:
            return None
        now = self.clock.now()
        if self._timed_from is None:  # the first step of this process warms up: time from its end
            self._timed_from, self._timed_first, self._edges = now, step, 0.0
            return None
        timed = step - self._timed_first
        step_s = self.clock.steps(now - self._timed_from - self._edges, timed)
        if timed < MIN_TIMED_STEPS:
            return None
        if step < self.plan.warmup_steps and step_s * timed < FIT_FRACTION * self.plan.budget_s:
            return None
        return self._fit(step, step_s, "fitted")

    def evaluated(self, step: int, seconds: float, samples: int) -> str | None:
        """After the evaluation at `step` (not the final one), which read `samples` in `seconds`:
        a refit when the first fit is made and REFIT_FRACTION of the budget is past. Call it before
        the step's checkpoint, so that the checkpoint holds it."""
        self._add_edge(seconds)
        self._eval_sample = self.clock.evaluation(seconds, samples)
        if isinstance(self.clock, FixedClock):
            self.clock.spent += samples * self.clock.eval_sample
        if self.settled or self.fits < 1 or self._timed_from is None or step <= self._timed_first:
            return None
        if self.clock.elapsed(self.start) < REFIT_FRACTION * self.plan.budget_s:
            return None  # too soon after the first fit to know more: wait for a later evaluation
        now = self.clock.now()
        step_s = self.clock.steps(now - self._timed_from - self._edges, step - self._timed_first)
        return self._fit(step, step_s, "re-fitted after the evaluation", evaluated=True)

    def checkpointed(self, seconds: float) -> None:
        self._add_edge(seconds)
        self._checkpoint = self.clock.checkpoint(seconds)
        if isinstance(self.clock, FixedClock):
            self.clock.spent += self.clock.checkpoint_s

    def _add_edge(self, seconds: float) -> None:
        if self._timed_from is not None:
            self._edges += seconds

    def _costs(self, step_s: float) -> Costs:
        per_sample = step_s / max(self.plan.samples_per_step, 1)
        eval_sample = self._eval_sample if self._eval_sample is not None else EVAL_SAMPLE_FRACTION * per_sample
        if self._checkpoint is not None:
            checkpoint = self._checkpoint
        else:
            checkpoint = self.clock.checkpoint(0.05 + self.checkpoint_bytes / CHECKPOINT_BYTES_PER_S)
        return Costs(step=step_s, eval_sample=eval_sample, checkpoint=checkpoint)

    def _fit(self, step: int, step_s: float, how: str, *, evaluated: bool = False) -> str:
        costs = self._costs(step_s)
        elapsed = self.clock.elapsed(self.start)
        self.fitted_steps = max(1, fit_steps(self.plan, costs, done=step, elapsed_s=elapsed, evaluated=evaluated))
        self.fits += 1
        # The next fit times the steps from here: the machine's speed now, not the run's average.
        self._timed_from, self._timed_first, self._edges = self.clock.now(), step, 0.0
        self.history.append({"step": step, "total": self.fitted_steps, "elapsed_seconds": elapsed,
                             "step_seconds": step_s, "eval_sample_seconds": costs.eval_sample,
                             "checkpoint_seconds": costs.checkpoint})
        capped = ", capped by train.max_steps" if self.fitted_steps == self.plan.max_steps else ""
        return (f"schedule.budget=time: {how} at step {step}: {self.fitted_steps} steps{capped} "
                f"({step_s * 1e3:.1f} ms per step) end the schedule within "
                f"train.max_minutes={self.plan.budget_s / 60:g}")


def eval_samples(task, batches: int, batch_size: int) -> int:
    """Samples an evaluation of `batches` batches (0: the whole split) reads: the task says
    (`eval_sample_count`); for a task without that method, `batches` x `batch_size` (one batch for 0)."""
    count = getattr(task, "eval_sample_count", None)
    if count is not None:
        return int(count(batches, batch_size))
    return max(1, batches) * batch_size
