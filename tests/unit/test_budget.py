"""schedule.budget=time: the fit of the step count (train/budget.py) against brute force."""

from __future__ import annotations

import pytest

from scaletrain.train import budget
from scaletrain.train.budget import Costs, FixedClock, Plan, TimeBudget, edges_between, fit_steps, remaining_seconds


def _plan(**kw) -> Plan:
    base = dict(budget_s=300.0, max_steps=100_000, warmup_steps=100, samples_per_step=4, eval_every=500,
                eval_samples=256, final_eval_samples=2259, checkpoint_every=500, sample_tokens=200)
    return Plan(**{**base, **kw})


def _simulate(total: int, done: int, plan: Plan, costs: Costs, evaluated: bool = False) -> float:
    """The loop itself, step by step: each step, then its edges (not on the last step)."""
    seconds = 0.0
    for s in range(done, total + 1):
        if s > done:
            seconds += costs.step
        if s == total or s == 0:
            continue
        if plan.eval_every and s % plan.eval_every == 0 and not (s == done and evaluated):
            seconds += plan.eval_samples * costs.eval_sample
        if plan.checkpoint_every and s % plan.checkpoint_every == 0:
            seconds += costs.checkpoint
    return seconds + (plan.final_eval_samples + plan.sample_tokens) * costs.eval_sample + costs.checkpoint


@pytest.mark.parametrize("every", [1, 3, 7, 500])
def test_edges_between_counts_multiples(every):
    for first in range(0, 30):
        for last in range(first, 40):
            expected = sum(1 for s in range(first, last) if s > 0 and s % every == 0)
            assert edges_between(max(first, 1), last, every) == expected, (first, last)
    assert edges_between(1, 100, 0) == 0


@pytest.mark.parametrize("done,evaluated", [(0, False), (6, False), (10, False), (10, True), (499, False), (500, True)])
def test_remaining_seconds_is_the_loop(done, evaluated):
    plan = _plan(eval_every=10, checkpoint_every=15, eval_samples=7, final_eval_samples=31, sample_tokens=5)
    costs = Costs(step=0.25, eval_sample=0.01, checkpoint=0.7)
    for total in range(max(done, 1), done + 60):
        assert remaining_seconds(total, done, plan, costs, evaluated=evaluated) == pytest.approx(
            _simulate(total, done, plan, costs, evaluated)), total


def test_fit_is_the_largest_count_that_fits():
    plan = _plan(eval_every=50, checkpoint_every=70, budget_s=100.0)
    costs = Costs(step=0.1, eval_sample=0.002, checkpoint=0.3)
    for done, elapsed in [(5, 1.0), (60, 9.5), (300, 40.0)]:
        n = fit_steps(plan, costs, done=done, elapsed_s=elapsed)
        left = plan.budget_s - elapsed - budget.reserve_seconds(plan.budget_s)
        assert _simulate(n, done, plan, costs) <= left + 1e-9
        assert _simulate(n + 1, done, plan, costs) > left
    # capped by train.max_steps, and never below what is done
    assert fit_steps(_plan(max_steps=40, budget_s=1000.0), costs, done=5, elapsed_s=0.0) == 40
    assert fit_steps(plan, costs, done=30, elapsed_s=99.0) == 30


def test_time_budget_fits_after_timing_then_refits_at_an_evaluation():
    plan = _plan(budget_s=60.0, warmup_steps=100, eval_every=10, eval_samples=64, final_eval_samples=128,
                 checkpoint_every=10, samples_per_step=16, sample_tokens=40)
    clock = FixedClock(step=1.0, eval_sample=0.01, checkpoint=0.5, startup=2.0)
    b = TimeBudget(plan, start=0.0, clock=clock)
    assert not b.wants_probe and b.after_step(1) is None
    assert b.wants_probe  # after the first step: one evaluation batch is timed
    b.probed(0.5, 16)
    assert not b.wants_probe
    lines = [b.after_step(s) for s in range(2, 7)]
    # Timed from the end of step 1; 5 timed steps take 5 s > 3 % of 60 s: the fit comes at step 6.
    assert lines[:4] == [None] * 4 and "fitted at step 6" in lines[4]
    first = fit_steps(plan, Costs(step=1.0, eval_sample=0.01, checkpoint=0.5), done=6, elapsed_s=2.0 + 6.0 + 0.16)
    assert b.total() == first and b.fits == 1
    for s in range(7, 11):
        b.after_step(s)
    line = b.evaluated(10, seconds=0.123, samples=64)  # elapsed 12.64 s > 10 % of 60 s: the second fit
    assert "re-fitted" in line and not b.settled
    second = fit_steps(plan, Costs(step=1.0, eval_sample=0.01, checkpoint=0.5), done=10,
                       elapsed_s=2.0 + 10.0 + 0.16 + 0.64, evaluated=True)
    assert b.total() == second
    # Every later evaluation refits; with every duration as predicted, the count stays.
    for s in range(11, 21):
        b.after_step(s)
    assert "re-fitted" in b.evaluated(20, seconds=0.1, samples=64) and b.fits == 3 and b.total() == second


def test_a_refit_follows_the_machine_when_it_slows_down():
    plan = _plan(budget_s=600.0, warmup_steps=0, eval_every=50, eval_samples=64, final_eval_samples=64,
                 checkpoint_every=0, samples_per_step=16)
    clock = FixedClock(step=1.0, eval_sample=0.0, startup=0.0)
    b = TimeBudget(plan, start=0.0, clock=clock)
    for s in range(1, 51):
        b.after_step(s)
    b.evaluated(50, seconds=0.0, samples=64)
    before = b.total()
    clock.step = 1.25  # the machine slows down by a fifth
    for s in range(51, 101):
        b.after_step(s)
    assert "re-fitted" in b.evaluated(100, seconds=0.0, samples=64)
    assert b.history[-1]["step_seconds"] == 1.25  # the window since the last fit, not the run's mean
    # 100 steps took 112.5 s; the rest of the 600 s (less the reserve) at 1.25 s a step
    assert b.total() < before and b.total() == fit_steps(plan, Costs(step=1.25, eval_sample=0.0, checkpoint=0.0),
                                                         done=100, elapsed_s=112.5, evaluated=True)


def test_a_resumed_budget_keeps_its_count():
    b = TimeBudget(_plan(), start=0.0, fitted_steps=1234, fits=1, clock=FixedClock(step=1.0))
    assert b.settled and b.total() == 1234
    assert all(b.after_step(s) is None for s in range(1, 50))
    assert b.evaluated(500, 1.0, 256) is None and b.total() == 1234


def test_without_a_probe_an_evaluated_sample_costs_a_third_of_a_trained_one():
    plan = _plan(budget_s=60.0, warmup_steps=0, samples_per_step=16)
    b = TimeBudget(plan, start=0.0, clock=FixedClock(step=1.0))
    for s in range(1, 7):
        b.after_step(s)
    assert b.history[0]["eval_sample_seconds"] == pytest.approx(budget.EVAL_SAMPLE_FRACTION / 16)


def test_no_evaluation_settles_after_one_fit():
    b = TimeBudget(_plan(eval_every=0, warmup_steps=0), start=0.0, clock=FixedClock(step=0.5))
    for s in range(1, 7):
        b.after_step(s)
    assert b.fits == 1 and b.settled
