"""Fault-injection harness shared by tests/reliability and benchmarks/faults.py.

A run is the real `python -m scaletrain train` in its own process group, so a `kill -9` of the
group takes torchrun's agent and every rank with it, exactly like a preempted node. What a trial
proves is read from the run folder afterwards: the checkpoints (every `step_*` folder must verify),
the final weights (bit for bit against an uninterrupted run) and the data positions saved in each
checkpoint a resume started from (which sample ids the kept chain of steps trained on).
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from scaletrain.train import checkpoint as ckpt

ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
       "COLUMNS": "200", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}

# gpt-tiny, quiet and deterministic: one thread, fp32, no evaluation or sample until the end, a
# constant lr (a resume continues any schedule exactly, but constant keeps losses comparable).
QUIET = ["train.threads=1", "log.progress=false", "log.sample_tokens=0", "log.tensorboard=false",
         "train.eval_every=0", "train.final_eval_batches=1", "train.precision=fp32", "log.every=1",
         "schedule.name=constant", "schedule.warmup_steps=0"]


def train_args(run_dir: Path, cache_dir: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "scaletrain", "train", "gpt-tiny", *QUIET, f"data.cache_dir={cache_dir}",
            f"train.run_dir={run_dir}", *extra]


def start(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """The command in a new session (its own process group), output to files in `cwd`."""
    out = open(cwd / f"attempt-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **ENV, **(env or {})})
    proc.log_path = Path(out.name)  # type: ignore[attr-defined]
    out.close()
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.wait()
        raise
    return proc.returncode, proc.log_path.read_text(errors="replace")  # type: ignore[attr-defined]


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc: no psutil needed)."""
    parents = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents[ppid].append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def rank_pids(proc: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of torchrun's workers below `proc` (read from their environment)."""
    ranks = {}
    for pid in descendants(proc.pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"RANK="):
                ranks[int(item[5:])] = pid
    return ranks


@dataclass
class Kill:
    """When and what to kill: `moment` "random" (after `delay` s) or "checkpoint" (while a
    checkpoint folder is being written); `target` "group" (every process) or a rank number."""

    moment: str = "random"
    delay: float = 5.0
    target: str | int = "group"
    # Anchor the moment to a step instead of the clock (a slower or faster machine moves a clock
    # moment out of training): "random" waits for checkpoint step_<step> and then `delay` seconds;
    # "checkpoint" kills while step_<step> is being written.
    step: int | None = None


def kill_during(proc: subprocess.Popen, run_dir: Path, kill: Kill, timeout: float = 300) -> dict:
    """Wait for the moment, kill, and report what was on disk just before and after."""
    root = run_dir / "checkpoints"
    began = time.monotonic()
    hit_checkpoint = False
    # A crashed attempt's partial folder stays until that step is saved again: not a new write.
    stale = {n for n in os.listdir(root) if n.startswith(".tmp-step_")} if root.is_dir() else set()
    anchor = None  # when checkpoint step_<kill.step> appeared
    while proc.poll() is None and time.monotonic() - began < timeout:
        elapsed = time.monotonic() - began
        if kill.step is not None:
            if kill.moment == "checkpoint" and (root / f".tmp-step_{kill.step:08d}").is_dir():
                hit_checkpoint = True
                break
            if kill.moment == "random":
                if anchor is None and any(p.name >= f"step_{kill.step:08d}" for p in ckpt.list_checkpoints(root)):
                    anchor = time.monotonic()
                if anchor is not None and time.monotonic() - anchor >= kill.delay:
                    break
            time.sleep(0.0005)
            continue
        if kill.moment == "random" and elapsed >= kill.delay:
            break
        if kill.moment == "checkpoint" and elapsed >= kill.delay and root.is_dir():
            try:
                if any(n.startswith(".tmp-step_") and n not in stale for n in os.listdir(root)):
                    hit_checkpoint = True
                    break
            except FileNotFoundError:
                pass
        time.sleep(0.0005 if kill.moment == "checkpoint" else 0.01)
    before = [p.name for p in ckpt.list_checkpoints(root)]
    alive = proc.poll() is None
    target = kill.target
    if alive:
        if kill.target == "group":
            kill_group(proc)
        else:
            pid = rank_pids(proc).get(int(kill.target))
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            else:  # the ranks are not up yet (or already gone): a crash of the whole job instead
                kill_group(proc)
                target = "group (ranks not up)"
    try:
        proc.wait(timeout=120)  # torchrun ends the other ranks when one dies
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.wait()
    kill_group(proc)  # nothing of the job survives into the next attempt
    after = [p.name for p in ckpt.list_checkpoints(root)]
    return {"killed": alive, "at_seconds": round(time.monotonic() - began, 3), "during_checkpoint": hit_checkpoint,
            "target": target, "before": before, "after": after}


def checkpoint_problems(run_dir: Path, before: list[str], after: list[str]) -> list[str]:
    """A `step_*` folder that does not verify, or the newest good one deleted by the crash."""
    problems = []
    for name in after:
        problems += ckpt.verify_checkpoint(run_dir / "checkpoints" / name)
    if before and (not after or after[-1] < before[-1]):
        problems.append(f"newest checkpoint {before[-1]} was lost (left: {after})")
    return problems


def resume_point(run_dir: Path) -> tuple[int, int]:
    """(step, data position) that `train.resume=auto` continues from: (0, 0) for a fresh start."""
    chosen, _ = ckpt.resolve_resume("auto", run_dir)
    if chosen is None:
        return 0, 0
    state = json.loads((chosen / "trainer.json").read_text())
    return int(state["step"]), int(state["position"])


@dataclass
class Trial:
    kills: list[dict] = field(default_factory=list)
    segments: list[tuple[int, int]] = field(default_factory=list)  # (step, position) each attempt began at
    problems: list[str] = field(default_factory=list)
    attempts: int = 0
    output: str = ""


def killed_run(run_dir: Path, cache_dir: str, extra: list[str], kills: list[Kill], cwd: Path,
               timeout: float = 300, max_attempts: int = 6, env: dict | None = None) -> Trial:
    """Start the run, apply each kill to one attempt, then resume with train.resume=auto until it
    finishes (a kill that comes after the run ended is recorded as not killed)."""
    trial = Trial()
    pending = list(kills)
    while trial.attempts < max_attempts:
        trial.segments.append(resume_point(run_dir))
        args = train_args(run_dir, cache_dir, *extra, *(["train.resume=auto"] if trial.attempts else []))
        proc = start(args, cwd, env)
        trial.attempts += 1
        if pending:
            record = kill_during(proc, run_dir, pending.pop(0), timeout)
            trial.kills.append(record)
            trial.problems += checkpoint_problems(run_dir, record["before"], record["after"])
            code, out = finish(proc, timeout)
            if not record["killed"] and code == 0:
                trial.output = out
                return trial
            continue
        code, out = finish(proc, timeout)
        trial.output = out
        if code == 0:
            return trial
        trial.problems.append(f"attempt {trial.attempts} exited {code}: {out[-2000:]}")
    trial.problems.append(f"not finished after {max_attempts} attempts")
    return trial


def timed_run(run_dir: Path, cache_dir: str, extra: list[str], cwd: Path, env: dict | None = None,
              timeout: float = 300) -> tuple[float, float, float]:
    """Run to the end, timing when the first checkpoint appears, when the last one (the
    `train.max_steps` one) appears, and when the run ends: the window where kills land mid-training."""
    began = time.monotonic()
    proc = start(train_args(run_dir, cache_dir, *extra), cwd, env)
    steps = next(int(a.split("=")[1]) for a in reversed(extra) if a.startswith("train.max_steps="))
    first = last = None
    while proc.poll() is None and time.monotonic() - began < timeout:
        found = ckpt.list_checkpoints(run_dir / "checkpoints")
        if found and first is None:
            first = time.monotonic() - began
        if found and found[-1].name == f"step_{steps:08d}" and last is None:
            last = time.monotonic() - began
        time.sleep(0.005)
    code, out = finish(proc, timeout)
    if code != 0:
        raise RuntimeError(f"the uninterrupted run failed ({code}): {out[-2000:]}")
    end = time.monotonic() - began
    return first or 0.0, last or end, end


def final_position(run_dir: Path) -> tuple[int, int]:
    last = ckpt.list_checkpoints(run_dir / "checkpoints")[-1]
    state = json.loads((last / "trainer.json").read_text())
    return int(state["step"]), int(state["position"])


def audit_samples(task, segments: list[tuple[int, int]], final_step: int, global_batch: int) -> tuple[int, int]:
    """(repeated, skipped) sample ids of the chain of kept steps against an uninterrupted run.

    Attempt i resumed at (step_i, position_i) and its work up to the next attempt's resume step
    is what the final weights contain; its steps read positions position_i + k x global_batch
    (the trainer's rule). The multiset of sample ids they read is compared with the ids of steps
    1..final_step of one run without interruption.
    """
    ends = [s for s, _ in segments[1:]] + [final_step]
    seen: collections.Counter = collections.Counter()
    for (step, position), end in zip(segments, ends):
        count = max(0, end - step) * global_batch
        seen.update(map(int, task.sample_ids(position, count)))
    expected = collections.Counter(map(int, task.sample_ids(0, final_step * global_batch)))
    repeated = sum((seen - expected).values())
    skipped = sum((expected - seen).values())
    return repeated, skipped


def weights_differ(a: Path, b: Path) -> list[str]:
    """Names of tensors that are not bit-identical between two run folders' final weights."""
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    if wa.keys() != wb.keys():
        return sorted(set(wa) ^ set(wb))
    return [k for k in wa if not torch.equal(wa[k], wb[k])]


def build_task(cache_dir: str, extra: list[str]):
    """The run's task (its sample order) rebuilt from the prepared data, for the audit."""
    from scaletrain.config.load import load_config
    from scaletrain.train.build import build_task as build

    cfg = load_config("gpt-tiny", [*QUIET, f"data.cache_dir={cache_dir}", *extra])
    task, _, _, _ = build(cfg, torch.device("cpu"), progress=False)
    return task, cfg


def random_kills(rng: random.Random, n: int, first: float, end: float, ranks: int) -> list[Kill]:
    """Kills at delays uniform over [first, end) of a run's timeline (its first checkpoint and its
    end, as timed on an uninterrupted run), at that moment or at the next checkpoint write, of the
    whole job or of one rank."""
    kills = []
    for _ in range(n):
        moment = rng.choice(["random", "checkpoint"])
        target: str | int = "group" if ranks == 1 else rng.choice(["group", *range(ranks)])
        kills.append(Kill(moment, rng.uniform(first, 0.95 * end), target))
    return kills
