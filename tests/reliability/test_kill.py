"""Item 1, fast version: kill -9 a training run at a random moment and in the middle of writing a
checkpoint, resume with train.resume=auto, and get the uninterrupted run's weights bit for bit,
with no checkpoint half-written or lost and no sample repeated or skipped.

benchmarks/faults.py runs 20 such trials (single and 2-rank, any rank); these are two plus one.
"""

from __future__ import annotations

import random

import pytest

from harness import Kill, audit_samples, build_task, final_position, killed_run, timed_run, weights_differ

pytestmark = pytest.mark.slow

STEPS = 12
SINGLE = [f"train.max_steps={STEPS}", "train.checkpoint_every=1", "checkpoint.keep_last=2"]
SLOW = {"SCALETRAIN_FAULT": "slow_data:seconds=0.1"}  # batches take 0.1 s: a wider training window


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
    """The uninterrupted run."""
    work = tmp_path_factory.mktemp("kill-ref")
    timed_run(work / "run", cache_dir, SINGLE, work, SLOW)
    return work / "run"


@pytest.mark.parametrize("moment", ["checkpoint", "random"], ids=["mid-checkpoint", "random"])
def test_killed_single_process_run_resumes_bit_exact(tmp_path, cache_dir, reference, moment):
    ref_dir = reference
    # Mid-training: while checkpoint k is written, or a random fraction of a step after it appeared.
    rng = random.Random(moment)
    kill = Kill(moment, rng.uniform(0.0, 0.15), step=rng.randrange(2, STEPS - 1))
    run_dir = tmp_path / "run"
    trial = killed_run(run_dir, cache_dir, SINGLE, [kill], tmp_path, env=SLOW)
    assert trial.problems == [], trial.problems
    assert trial.kills[0]["killed"], "the run ended before the kill: the trial proves nothing"
    if moment == "checkpoint":
        assert trial.kills[0]["during_checkpoint"]
    assert weights_differ(ref_dir, run_dir) == []
    task, cfg = build_task(cache_dir, SINGLE)
    step, position = final_position(run_dir)
    assert (step, position) == (STEPS, STEPS * cfg.train.batch_size)
    assert audit_samples(task, trial.segments, STEPS, cfg.train.batch_size) == (0, 0)
    if trial.segments[-1] != (0, 0):
        assert "resumed from" in trial.output


def test_the_audit_sees_a_lost_or_repeated_step(cache_dir):
    """The audit is not vacuous: a resume one step too early repeats a batch, one too late skips one."""
    task, cfg = build_task(cache_dir, SINGLE)
    b = cfg.train.batch_size
    assert audit_samples(task, [(0, 0), (5, 5 * b)], STEPS, b) == (0, 0)
    assert audit_samples(task, [(0, 0), (5, 4 * b)], STEPS, b) == (b, b)  # re-reads batch 5, never reads 12
    assert audit_samples(task, [(0, 0), (5, 6 * b)], STEPS, b) == (b, b)


def test_killed_during_an_async_save_resumes_bit_exact(tmp_path, cache_dir, reference):
    """checkpoint.async_save: killed while a checkpoint is still hidden (written in the background,
    not yet sealed), the previous one is in place and intact, and the resumed run ends where the
    uninterrupted (synchronous) run ends."""
    run_dir = tmp_path / "run"
    kill = Kill("checkpoint", 0.0, step=6)
    trial = killed_run(run_dir, cache_dir, [*SINGLE, "checkpoint.async_save=true"], [kill], tmp_path, env=SLOW)
    assert trial.problems == [], trial.problems
    assert trial.kills[0]["killed"] and trial.kills[0]["during_checkpoint"]
    assert trial.kills[0]["after"] and trial.kills[0]["after"][-1] == "step_00000005"
    assert trial.segments[-1][0] == 5 and "resumed from" in trial.output
    assert weights_differ(reference, run_dir) == []
