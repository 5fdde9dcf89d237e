"""The long fault-injection suite (issue 8): kill trials, world-size changes, corruption, fuzzed bad
input, numerical faults, hangs, untrusted files, full and read-only disks. The fast versions of each
are in tests/reliability/; this script runs more trials, counts, and writes
docs/results/faults.json (raw figures, machine, date, versions) and docs/reliability.md (the table).

    .venv/bin/python benchmarks/faults.py [--trials 20] [--fuzz 300] [--seed 8]
    .venv/bin/python benchmarks/faults.py --only bad_inputs,untrusted   # those figures alone

Every figure is measured in this run; nothing is carried over from an earlier one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "reliability"), str(ROOT / "tests")]

import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

import bad_inputs  # noqa: E402
import harness  # noqa: E402
from harness import Kill, audit_samples, build_task, final_position, finish, killed_run, start, train_args  # noqa: E402
from scaletrain.data import shards  # noqa: E402
from scaletrain.hardware import machine_info  # noqa: E402
from scaletrain.train import checkpoint as ckpt  # noqa: E402

DDP = ["parallel.strategy=ddp", "parallel.nproc=2"]
STEPS = 24
KILL_ARGS = [f"train.max_steps={STEPS}", "train.checkpoint_every=1", "checkpoint.keep_last=2"]
# gpt-tiny trains 24 steps in about a second, against ~8 s of start-up and finish: batches that take
# 0.1 s to build (a data-bound run; the numbers are unchanged) stretch the training window, so that
# more of the random kill moments land in it.
SLOW = {"SCALETRAIN_FAULT": "slow_data:seconds=0.1"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_ok(work: Path, cache: str, name: str, *extra: str, env: dict | None = None, timeout: float = 300):
    began = time.monotonic()
    code, out = finish(start(train_args(work / name, cache, *extra), work, env), timeout)
    return code, out, time.monotonic() - began


# ---- 1. kill anywhere ----------------------------------------------------------------------------
def kill_trials(work: Path, cache: str, n: int, rng: random.Random) -> dict:
    refs, spans = {}, {}
    for world, layout in ((1, []), (2, DDP)):
        # The uninterrupted run, timed: when its first checkpoint appears and when it ends. Kill
        # moments are drawn between the two (before the first checkpoint a kill only restarts).
        began = time.monotonic()
        proc = start(train_args(work / f"ref-{world}", cache, *layout, *KILL_ARGS), work, SLOW)
        first = last = None
        while proc.poll() is None:
            found = ckpt.list_checkpoints(work / f"ref-{world}" / "checkpoints")
            if found and first is None:
                first = time.monotonic() - began
            if found and found[-1].name == f"step_{STEPS:08d}" and last is None:
                last = time.monotonic() - began
            time.sleep(0.005)
        code, out = finish(proc, 300)
        assert code == 0, out[-2000:]
        refs[world] = work / f"ref-{world}"
        spans[world] = (first or 0.0, last or 0.0, time.monotonic() - began)
        log(f"reference world {world}: first checkpoint at {spans[world][0]:.1f} s, last at {spans[world][1]:.1f} s, "
            f"done at {spans[world][2]:.1f} s")
    task, cfg = build_task(cache, KILL_ARGS)
    trials = []
    for i in range(n):
        world = 1 if i < n // 2 else 2
        layout = [] if world == 1 else DDP
        first, last, end = spans[world]
        kill = harness.random_kills(rng, 1, first, end, world)[0]
        if kill.moment == "checkpoint":  # it waits for the next checkpoint write: one must still come
            kill.delay = rng.uniform(0.8 * first, max(0.8 * first, last - 0.5))
        run_dir = work / f"trial-{i:02d}"
        trial = killed_run(run_dir, cache, [*layout, *KILL_ARGS], [kill], work, env=SLOW)
        differ = harness.weights_differ(refs[world], run_dir) if (run_dir / "model.safetensors").is_file() else ["missing"]
        batch = cfg.train.batch_size * world
        repeated, skipped = audit_samples(task, trial.segments, STEPS, batch)
        step, position = final_position(run_dir)
        record = {"trial": i, "world_size": world, "moment": kill.moment, "delay_s": round(kill.delay, 2),
                  "target": kill.target, **{k: trial.kills[0][k] for k in ("killed", "at_seconds", "during_checkpoint")},
                  "checkpoints_before_kill": trial.kills[0]["before"], "checkpoints_after_kill": trial.kills[0]["after"],
                  "resumed_at": trial.segments[1:], "attempts": trial.attempts, "bit_exact": not differ,
                  "samples_repeated": repeated, "samples_skipped": skipped, "final_position": position,
                  "final_step": step, "problems": trial.problems}
        trials.append(record)
        log(f"kill trial {i}: world {world} {kill.moment} target={kill.target} killed={record['killed']} "
            f"mid-checkpoint={record['during_checkpoint']} resumed_at={record['resumed_at']} "
            f"bit_exact={record['bit_exact']} audit=({repeated},{skipped}) problems={len(trial.problems)}")
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"trials": trials, "reference_seconds": spans}


# ---- 2. world size change ------------------------------------------------------------------------
def world_size_change(work: Path, cache: str) -> list[dict]:
    common = ["train.max_steps=8", "train.checkpoint_every=2", "checkpoint.keep_last=2"]
    layout = {2: DDP, 1: ["train.grad_accum=2"]}  # the same 32-sample global batch on both
    out = []
    for first, second in ((2, 1), (1, 2)):
        name = f"ws-{first}-{second}"
        assert run_ok(work, cache, f"{name}-ref", *layout[first], *common)[0] == 0
        assert run_ok(work, cache, name, *layout[first], *common, "train.max_steps=4")[0] == 0
        resumed_from = json.loads((work / name / "checkpoints" / "step_00000004" / "trainer.json").read_text())
        code, text, _ = run_ok(work, cache, name, *layout[second], *common, "train.resume=auto")
        assert code == 0, text[-2000:]

        def losses(run):
            rows = [json.loads(x) for x in (work / run / "metrics.jsonl").read_text().splitlines()]
            return {r["step"]: r["loss"] for r in rows if r.get("split") == "train"}

        ref, got = losses(f"{name}-ref"), losses(name)
        from safetensors.torch import load_file

        a, b = load_file(work / f"{name}-ref" / "model.safetensors"), load_file(work / name / "model.safetensors")
        rel = max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)) for k in a)
        final = json.loads((work / name / "checkpoints" / "step_00000008" / "trainer.json").read_text())
        out.append({"from": first, "to": second, "resumed_position": resumed_from["position"],
                    "final_position": final["position"], "expected_final_position": 8 * 32,
                    "max_abs_loss_difference": max(abs(ref[s] - got[s]) for s in ref),
                    "max_relative_parameter_difference": rel, "steps_compared": sorted(ref)})
        log(f"world size {first}->{second}: {out[-1]['max_abs_loss_difference']:.3g} max loss difference")
    return out


# ---- 3. corruption -------------------------------------------------------------------------------
def corruption(work: Path, cache: str, rng: random.Random, rounds: int) -> dict:
    from test_corruption import DAMAGE, damage

    common = ["train.checkpoint_every=2", "checkpoint.keep_last=3"]
    assert run_ok(work, cache, "corrupt-run", "train.max_steps=4", *common)[0] == 0
    source = work / "corrupt-run" / "checkpoints" / "step_00000004"
    data_dir = next(p for p in Path(cache).iterdir() if (p / "manifest.json").is_file())
    tried = detected = 0
    misses = []
    for kind, folder, check in (("checkpoint", source, ckpt.verify_checkpoint), ("data", data_dir, shards.verify)):
        names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.endswith(".lock"))
        for r in range(rounds):
            for name in names:
                for how in DAMAGE:
                    copy = work / "corrupt" / f"{kind}-{name}-{how}-{r}"
                    shutil.copytree(folder, copy)
                    damage(copy / name, how, seed=rng.randrange(1 << 30))
                    problems = check(copy)
                    tried += 1
                    if problems and any(name in p for p in problems):
                        detected += 1
                    else:
                        misses.append(f"{kind} {name} {how}: {problems}")
                    shutil.rmtree(copy)
    # The fallback, end to end: damage the newest checkpoint, resume=auto, compare with a clean run.
    run = work / "fallback"
    shutil.copytree(work / "corrupt-run", run)
    damage(run / "checkpoints" / "step_00000004" / "__0_0.distcp", "bitflip", seed=3)
    code, text, _ = run_ok(work, cache, "fallback", "train.max_steps=6", "train.resume=auto", *common)
    assert run_ok(work, cache, "fallback-ref", "train.max_steps=6", *common)[0] == 0
    flat = text.replace("\n", "")
    fallback = {"exit_code": code, "said_skipped": "warning: skipped damaged checkpoint step_00000004" in flat,
                "resumed_from_previous": "step_00000002 at step 2" in flat,
                "bit_exact": not harness.weights_differ(work / "fallback-ref", run)}
    log(f"corruption: {detected}/{tried} detected; fallback {fallback}")
    return {"tried": tried, "detected": detected, "misses": misses, "fallback": fallback}


# ---- 4. bad input --------------------------------------------------------------------------------
def bad_input(work: Path, cache: str, examples: int) -> dict:
    from test_bad_input import check_case

    existing = work / "existing-run"
    (existing / "checkpoints" / "step_00000010").mkdir(parents=True)
    (existing / "metrics.jsonl").write_text('{"step": 10}\n')
    (existing / "config.yaml").write_text("name: old\n")
    os.utime(existing, ns=(1, 1))
    results: list[dict] = []

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=bad_inputs.ALL)
    def run(case):
        try:
            line = check_case(case, existing, cache)
            results.append({"kind": case.kind, "clean": True, "line": line})
        except AssertionError as exc:
            results.append({"kind": case.kind, "clean": False, "why": str(exc)[:500], "argv": list(case.argv)})

    run()
    # A few through a real subprocess: the CLI as users meet it (argparse, imports, exit code).
    for argv in (["train", "gpt-tiny", "optim.lr=-1"], ["train", "gpt-tiny", "train.bogus=1"],
                 ["train", "/nonexistent.yaml"], ["frobnicate"], ["train", "gpt-tiny", "parallel.nproc=2"],
                 ["eval", "/nonexistent"], ["data", "verify", "/nonexistent"], ["train", "gpt-tiny", "name=../x"]):
        proc = subprocess.run([sys.executable, "-m", "scaletrain", *argv], capture_output=True, text=True, cwd=work,
                              env={**os.environ, **harness.ENV}, timeout=120)
        lines = proc.stderr.strip().splitlines()
        ok = proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
        results.append({"kind": "subprocess", "clean": ok, "argv": argv, "line": lines[-1] if lines else ""})
    results += hostile_inputs(work, cache, examples)
    kinds: dict[str, list[int]] = {}
    for r in results:
        k = kinds.setdefault(r["kind"], [0, 0])
        k[0] += 1
        k[1] += r["clean"]
    log(f"bad input: {sum(r['clean'] for r in results)}/{len(results)} clean; by kind {kinds}")
    return {"tried": len(results), "clean": sum(r["clean"] for r in results), "by_kind": kinds,
            "failures": [r for r in results if not r["clean"]][:40],
            "examples": [r["line"] for r in results if r["clean"]][:12],
            "cases": [r for r in results if r["kind"] not in ("subprocess",) and "name" in r]}


def _hostile_run(case, work: Path, cache: str, number: int) -> dict:
    """One case of tests/reliability/hostile_cases.py in a fresh folder, as a record."""
    import hostile_cases as hc

    trained, prepared = hc.shared_inputs(work / "hostile-shared", cache)
    root = work / "hostile" / f"{number:05d}" / "site"
    root.mkdir(parents=True)
    try:
        outcome = hc.run_case(case, root, trained, prepared, cache)
    except Exception as exc:  # a planter or the harness itself failed: count it, as not clean
        return {"name": case.name, "kind": case.kind, "clean": False, "problems": [f"harness: {exc!r}"[:300]],
                "line": "", "argv": list(case.argv)[:8], "seconds": 0.0}
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)
    problems = outcome.problems(case)
    lines = outcome.err.strip().splitlines()
    return {"name": case.name, "kind": case.kind, "clean": not problems, "problems": problems,
            "line": (lines[-1] if lines else "")[:400], "argv": [a[:120] for a in case.argv][:12],
            "payload_ran": outcome.marker, "seconds": round(outcome.seconds, 2)}


def hostile_inputs(work: Path, cache: str, examples: int) -> list[dict]:
    """The enumerated hostile cases (every command) and the fuzz of whole files and arguments:
    config files, manifests, JSONL/Parquet inputs, edited checkpoints, every subcommand's flags
    (derandomized: the same inputs on every run)."""
    import hostile_cases as hc

    results = []
    for case in hc.CASES:
        results.append(_hostile_run(case, work, cache, len(results)))
        log(f"hostile {case.name}: {'clean' if results[-1]['clean'] else results[-1]['problems']}")
    per = max(1, examples // 10)
    for generator, n in ((bad_inputs.config_file(), per), (bad_inputs.manifest(), per),
                         (bad_inputs.jsonl_or_parquet(), per), (bad_inputs.checkpoint_mutation(), per),
                         (bad_inputs.subcommand_argument(), 2 * per)):
        @settings(max_examples=n, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
        @given(case=generator)
        def run(case):
            results.append(_hostile_run(case, work, cache, len(results)))

        run()
    fuzzed = [r for r in results if r["kind"].startswith("fuzz")]
    log(f"hostile: {sum(r['clean'] for r in results)}/{len(results)} clean ({len(fuzzed)} fuzzed)")
    return results


# ---- 5. numerical faults -------------------------------------------------------------------------
def numerics(work: Path, cache: str) -> list[dict]:
    base = ["train.max_steps=12", "train.checkpoint_every=2", "checkpoint.keep_last=2"]
    cases = [
        ("nan loss, skip", "nan:step=3", []),
        ("nan loss, skip", "nan:step=9", []),
        ("nan loss, rollback", "nan:step=7", ["guard.action=rollback"]),
        ("nan loss, rollback", "nan:step=11", ["guard.action=rollback", "guard.lr_factor=0.1"]),
        ("loss spike x30, skip", "spike:step=8:factor=30", ["guard.spike_factor=3"]),
        ("loss spike x30, rollback", "spike:step=10:factor=30", ["guard.spike_factor=3", "guard.action=rollback"]),
        ("nan loss, skip, 2 ranks", "nan:step=5", DDP),
        ("nan loss, rollback, 2 ranks", "nan:step=6", [*DDP, "guard.action=rollback"]),
        ("inf loss, skip", "spike:step=6:factor=inf", []),
        ("inf loss, rollback, 2 ranks", "spike:step=9:factor=inf", [*DDP, "guard.action=rollback"]),
    ]
    out = []
    for i, (what, fault, extra) in enumerate(cases):
        code, text, seconds = run_ok(work, cache, f"nan-{i}", *base, *extra, env={"SCALETRAIN_FAULT": fault})
        summary = json.loads((work / f"nan-{i}" / "summary.json").read_text()) if code == 0 else {}
        from safetensors.torch import load_file

        finite = code == 0 and all(torch.isfinite(t).all() for t in load_file(work / f"nan-{i}" / "model.safetensors").values())
        step = int(fault.split("step=")[1].split(":")[0])
        caught = f"warning: step {step}:" in text
        out.append({"fault": fault, "what": what, "exit_code": code, "caught_at_its_step": caught,
                    "finished": summary.get("steps") == 12 and summary.get("stopped_by") == "max_steps",
                    "weights_finite": bool(finite),
                    "message": next((x for x in text.splitlines() if x.startswith("warning: step")), "")})
        log(f"numerics {fault} {extra}: {out[-1]}")
    out += inf_gradients(work)
    return out


def inf_gradients(work: Path) -> list[dict]:
    """An Inf gradient with a finite loss (a hook on a real MLP, through the Python API), with
    clipping on and off (off: the step does not log, so nothing else computes the norm)."""
    from test_numerics import _InfGradientAt
    from torch.utils.data import TensorDataset

    from scaletrain import Classification, Trainer, load_config

    out = []
    for clip in ("1.0", "0.0"):
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(256, 8, generator=g), torch.randint(0, 3, (256,), generator=g))
        run = work / f"inf-grad-{clip}"
        cfg = load_config("mlp-digits", [f"train.run_dir={run}", "train.max_steps=12", "train.eval_every=0",
                                         f"train.grad_clip={clip}", "log.every=5", "log.progress=false",
                                         "log.tensorboard=false", "schedule.name=constant", "train.batch_size=16"])
        torch.manual_seed(0)
        model = _InfGradientAt(at_call=7)
        err = io.StringIO()
        with contextlib.redirect_stdout(err), contextlib.redirect_stderr(err):
            summary = Trainer.from_config(cfg, model, Classification(data, data, seed=0)).fit()
        text = err.getvalue() + (run / "metrics.jsonl").read_text()
        out.append({"fault": f"inf gradient at step 7 (grad_clip={clip})", "what": "inf gradient, finite loss, skip",
                    "exit_code": 0, "caught_at_its_step": "warning: step 7:" in text,
                    "finished": summary["steps"] == 12 and summary["stopped_by"] == "max_steps",
                    "weights_finite": all(bool(torch.isfinite(p).all()) for p in model.parameters()),
                    "message": next((x for x in text.splitlines() if x.startswith("warning: step")), "")})
        log(f"numerics {out[-1]}")
    return out


# ---- 6. hangs ------------------------------------------------------------------------------------
def hangs(work: Path, cache: str) -> list[dict]:
    out = []
    for rank, step in ((1, 3), (0, 4)):
        began = time.monotonic()
        code, text, _ = run_ok(work, cache, f"stall-{rank}", *DDP, "train.max_steps=6", "parallel.timeout_seconds=10",
                               env={"SCALETRAIN_FAULT": f"stall:rank={rank}:step={step}:seconds=600"}, timeout=240)
        line = next((x for x in text.splitlines() if x.startswith("error:")), "")
        out.append({"stalled_rank": rank, "step": step, "timeout_seconds": 10, "exit_code": code,
                    "seconds_to_error": round(time.monotonic() - began, 1), "error": line,
                    "names_rank_and_step": f"step {step}" in line and f"rank {rank}" in text})
        log(f"hang rank {rank}: {out[-1]}")
    return out


# ---- 7. untrusted files --------------------------------------------------------------------------
def untrusted(work: Path, cache: str) -> dict:
    """The payload tests of tests/reliability/test_untrusted.py, run here and counted."""
    code = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:logging", "-W", "ignore", "-rA",
                           str(ROOT / "tests" / "reliability" / "test_untrusted.py")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, **harness.ENV})
    passed = [line.split("::")[1] for line in code.stdout.splitlines() if line.startswith("PASSED")]
    failed = [line.split("::")[1] for line in code.stdout.splitlines() if line.startswith("FAILED")]
    log(f"untrusted: {len(passed)} passed, {len(failed)} failed")
    return {"passed": passed, "failed": failed, "loaders": planted_payloads(work, cache)}


def planted_payloads(work: Path, cache: str) -> list[dict]:
    """Every loader that reads a run, checkpoint or prepared folder against every planted payload
    that applies to what it reads (tests/reliability/planted.py: LOADERS x PAYLOADS)."""
    import hostile_cases as hc
    import planted

    out = []
    for loader in planted.LOADERS:
        for payload in planted.PAYLOADS:
            if payload.reads not in loader.reads:
                continue
            case = next(c for c in hc.UNTRUSTED if c.name == f"{loader.name} x {payload.name}")
            record = _hostile_run(case, work, cache, 100_000 + len(out))
            out.append({"loader": loader.name, "payload": payload.name, "refused": record["clean"],
                        "payload_ran": record.get("payload_ran", False), "problems": record["problems"],
                        "line": record["line"], "seconds": record["seconds"]})
            log(f"untrusted {loader.name} x {payload.name}: {'refused' if record['clean'] else record['problems']}")
    log(f"untrusted loaders: {sum(r['refused'] for r in out)}/{len(out)} refused cleanly, "
        f"{sum(r['payload_ran'] for r in out)} payload(s) ran")
    return out


# ---- 8. disk full / read-only --------------------------------------------------------------------
def disk(work: Path, cache: str) -> dict:
    point = work / "small-disk"
    point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(point)]).returncode != 0:
        return {"skipped": "cannot mount a tmpfs (needs root)"}
    try:
        args = ["train.max_steps=6", "train.checkpoint_every=2", "checkpoint.keep_last=2"]
        code, text, _ = run_ok(work, cache, "small-disk/run", *args)
        errors = [x for x in text.splitlines() if x.startswith("error:")]
        left = [p.name for p in (point / "run" / "checkpoints").iterdir()]
        intact = all(ckpt.verify_checkpoint(point / "run" / "checkpoints" / n) == [] for n in left)
        shutil.copytree(point / "run", work / "moved")
        resumed = run_ok(work, cache, "moved", *args, "train.resume=auto")[0]
        subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        ro_code, ro_text, _ = run_ok(work, cache, "small-disk/run", *args, "train.resume=auto")
    finally:
        subprocess.run(["umount", "-l", str(point)])
    result = {"full_disk": {"exit_code": code, "error_lines": errors, "traceback": "Traceback" in text,
                            "checkpoints_left": left, "left_intact": intact, "resumed_elsewhere_exit_code": resumed},
              "read_only": {"exit_code": ro_code, "error": ro_text.strip().splitlines()[-1:]}}
    log(f"disk: {result}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--fuzz", type=int, default=300)
    parser.add_argument("--corruption-rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--only", default="", help="comma-separated parts to run (default all): kill, world_size, "
                        "corruption, bad_inputs, numerics, hangs, untrusted, disk; e.g. --only bad_inputs,untrusted "
                        "re-runs the bad-input and planted-payload figures alone")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    began = time.monotonic()
    date = datetime.now(timezone.utc)
    results_path = ROOT / "docs" / "results" / "faults.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    aliases = {"bad_inputs": "bad_input", "kills": "kill", "untrusted_loaders": "untrusted"}
    only = {aliases.get(x.strip(), x.strip()) for x in args.only.split(",") if x.strip()}
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        work = Path(tmp)
        cache = str(work / "cache")
        code, out, _ = run_ok(work, cache, "warmup", "train.max_steps=2")  # prepares the data once
        assert code == 0, out[-2000:]
        parts = {"kill": lambda: kill_trials(work, cache, args.trials, rng),
                 "world_size": lambda: world_size_change(work, cache),
                 "corruption": lambda: corruption(work, cache, rng, args.corruption_rounds),
                 "bad_input": lambda: bad_input(work, cache, args.fuzz),
                 "numerics": lambda: numerics(work, cache),
                 "hangs": lambda: hangs(work, cache),
                 "untrusted": lambda: untrusted(work, cache),
                 "disk": lambda: disk(work, cache)}
        detail = results.get("detail", {})
        for name, part in parts.items():
            if not only or name in only:
                log(f"--- {name}")
                detail[name] = part()
    kills = detail.get("kill", {}).get("trials", [])
    numeric = detail.get("numerics", [])
    results.update({
        "kill_trials": len(kills),
        "kill_bit_exact": sum(t["bit_exact"] and not t["problems"] for t in kills),
        "kill_trials_killed": sum(t["killed"] for t in kills),
        "kill_trials_mid_checkpoint": sum(t["during_checkpoint"] for t in kills),
        "samples_repeated": sum(t["samples_repeated"] for t in kills),
        "samples_skipped": sum(t["samples_skipped"] for t in kills),
        "corruptions_tried": detail.get("corruption", {}).get("tried", 0),
        "corruptions_detected": detail.get("corruption", {}).get("detected", 0),
        "bad_inputs_tried": detail.get("bad_input", {}).get("tried", 0),
        "bad_inputs_clean": detail.get("bad_input", {}).get("clean", 0),
        "untrusted_loaders_tried": len(detail.get("untrusted", {}).get("loaders", [])),
        "untrusted_loaders_refused": sum(r["refused"] for r in detail.get("untrusted", {}).get("loaders", [])),
        "untrusted_payloads_ran": sum(r["payload_ran"] for r in detail.get("untrusted", {}).get("loaders", [])),
        "nan_injections": len(numeric),
        "nan_survived": sum(n["caught_at_its_step"] and n["finished"] and n["weights_finite"] for n in numeric),
        "detail": detail,
    })
    stamp = {"date": date.isoformat(timespec="seconds"), "machine": machine_info(),
             "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
             "seed": args.seed, "seconds": round(time.monotonic() - began, 1)}
    if only and "date" in results:  # a partial rerun: the full run's stamp stays, the rerun is listed
        results.setdefault("reruns", []).append({"parts": sorted(only), **stamp})
    else:
        results.update(stamp)
        results.pop("reruns", None)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    from docs_out import write_results
    from scaletrain.atomic import write_text_atomic

    write_results(results_path, _printable(results))
    write_text_atomic(ROOT / "docs" / "reliability.md", render(_printable(results)))
    log(f"wrote {results_path} and docs/reliability.md in {results['seconds']:.0f} s")


def _printable(obj):
    """The results with every string writable as UTF-8 (a case's argv may hold a lone surrogate:
    the bytes of a prompt that is not UTF-8)."""
    if isinstance(obj, str):
        return obj.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(obj, dict):
        return {_printable(k): _printable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_printable(v) for v in obj]
    return obj


def _yes(flag) -> str:
    return "yes" if flag else "NO"


def _pct(a: int, b: int) -> str:
    return f"{a}/{b}" + (f" ({100 * a / b:.0f} %)" if b else "")


def render(r: dict) -> str:
    """docs/reliability.md from the figures of docs/results/faults.json."""
    d = r.get("detail", {})
    kills = d.get("kill", {}).get("trials", [])
    single = [t for t in kills if t["world_size"] == 1]
    multi = [t for t in kills if t["world_size"] == 2]
    ws = d.get("world_size", [])
    cor = d.get("corruption", {})
    bad = d.get("bad_input", {})
    num = d.get("numerics", [])
    hang = d.get("hangs", [])
    unt = d.get("untrusted", {})
    dsk = d.get("disk", {})
    m = r.get("machine", {})
    lines = [
        "# Reliability under faults and bad input",
        "",
        "Measured by `benchmarks/faults.py` (the long version of `tests/reliability/`, which `make test` runs) "
        f"on {r.get('date', '?')[:10]}: {m.get('cpu_model', '?')}, {m.get('logical_cores', '?')} logical cores, "
        f"torch {r.get('versions', {}).get('torch', '?')}, Python {r.get('versions', {}).get('python', '?')}, "
        f"gloo on CPU; seed {r.get('seed')}; {r.get('seconds', 0) / 60:.0f} minutes in all. Raw figures, every trial: "
        "[results/faults.json](results/faults.json). Runs are the real `python -m scaletrain train gpt-tiny` "
        "(2 layers, one thread per rank, fp32) in their own process group; 2-rank runs are `parallel.strategy=ddp "
        "parallel.nproc=2` under torchrun.",
        "",
        "| # | fault | result |",
        "|---|---|---|",
        f"| 1 | kill -9 at a random moment or mid-checkpoint, then `train.resume=auto` | "
        f"{_pct(r.get('kill_bit_exact', 0), r.get('kill_trials', 0))} bit-identical to the uninterrupted run "
        f"({len(single)} single-process, {len(multi)} on 2 ranks; {r.get('kill_trials_killed', 0)} killed while "
        f"running, {r.get('kill_trials_mid_checkpoint', 0)} while a checkpoint was being written); samples repeated "
        f"{r.get('samples_repeated', 0)}, skipped {r.get('samples_skipped', 0)}; half-written or lost checkpoints "
        f"{sum(bool(t['problems']) for t in kills)} |",
    ]
    for w in ws:
        lines.append(f"| 2 | world size {w['from']} → {w['to']} on resume (same global batch) | sample position continues "
                     f"({w['resumed_position']} → {w['final_position']}, expected {w['expected_final_position']}); "
                     f"max loss difference {w['max_abs_loss_difference']:.2g} over {len(w['steps_compared'])} steps, "
                     f"max relative parameter difference {w['max_relative_parameter_difference']:.2g} |")
    fb = cor.get("fallback", {})
    lines.append(f"| 3 | checkpoint and data files truncated, bit-flipped or deleted | "
                 f"{_pct(r.get('corruptions_detected', 0), r.get('corruptions_tried', 0))} detected, naming the file; "
                 f"damaged newest checkpoint: resume=auto said so: {_yes(fb.get('said_skipped'))}, resumed from the previous one: "
                 f"{_yes(fb.get('resumed_from_previous'))}, final weights bit-identical: {_yes(fb.get('bit_exact'))} |")
    lines.append(f"| 4 | bad input on every command: enumerated hostile cases and fuzz (hypothesis: configs, config files, "
                 f"command lines and every subcommand's flags, YAML, manifests, JSONL/Parquet, edited checkpoints) | "
                 f"{_pct(r.get('bad_inputs_clean', 0), r.get('bad_inputs_tried', 0))} ended with one `error:` line naming "
                 "the key, file or value, exit 2, no traceback, every file untouched and nothing created |")
    lines.append(f"| 5 | NaN / Inf loss, Inf gradient, loss spike injected (skip and rollback, 1 and 2 ranks) | "
                 f"{_pct(r.get('nan_survived', 0), r.get('nan_injections', 0))} caught at the injected step and the run "
                 "finished with finite weights |")
    for h in hang:
        lines.append(f"| 6 | rank {h['stalled_rank']} stalls at step {h['step']} (timeout {h['timeout_seconds']} s) | "
                     f"exit {h['exit_code']} after {h['seconds_to_error']} s (start-up included): `{h['error'][:150]}` |")
    lines.append(f"| 7 | planted pickle payloads (DCP `.metadata`, a DCP bytes item, `rng.pt`, a token shard, MNIST IDX files), a config name escaping `runs/` | "
                 f"{len(unt.get('passed', []))} checks passed, {len(unt.get('failed', []))} failed |")
    if unt.get("loaders"):
        lines.append(f"| 7 | every loader x every planted payload that applies (pickles, bytes entries, DCP classes, paths "
                     f"leaving the folder, malformed safetensors, parser bombs) | "
                     f"{_pct(r.get('untrusted_loaders_refused', 0), r.get('untrusted_loaders_tried', 0))} refused with one "
                     f"`error:` line, exit 2, the folder byte-identical; a payload ran in {r.get('untrusted_payloads_ran', 0)} |")
    fd, ro = dsk.get("full_disk", {}), dsk.get("read_only", {})
    if fd:
        lines.append(f"| 8 | disk full at the second checkpoint (3 MB tmpfs) | exit {fd['exit_code']}, "
                     f"{len(fd['error_lines'])} error line, {'a' if fd['traceback'] else 'no'} traceback; left "
                     f"{', '.join(fd['checkpoints_left'])}, {'intact' if fd['left_intact'] else 'DAMAGED'}, and no partial "
                     f"folder; copied to a roomier disk it resumed (exit {fd['resumed_elsewhere_exit_code']}) |")
        lines.append(f"|   | its error line | `{fd['error_lines'][0][:400] if fd['error_lines'] else ''}` |")
        lines.append(f"| 8 | read-only run folder | exit {ro['exit_code']}: `{(ro.get('error') or [''])[0]}` |")
    elif dsk:
        lines.append(f"| 8 | disk full / read-only | skipped: {dsk.get('skipped')} |")
    if kills:
        scratch = sum(t["resumed_at"] == [[0, 0]] or t["resumed_at"] == [(0, 0)] for t in kills)
        after = sum(bool(t["resumed_at"]) and t["resumed_at"][-1][0] == t["final_step"] for t in kills)
        lines += ["", f"Kill trials one by one ({scratch} were killed before their first complete checkpoint and "
                  f"restarted from step 0, {after} after their last one, in the final evaluation and export; the "
                  "others resumed mid-training):", "",
                  "| trial | ranks | moment | killed process | at (s) | mid-checkpoint | resumed at (step, position) | attempts | "
                  "bit-exact | repeated / skipped |", "|---|---|---|---|---|---|---|---|---|---|"]
        for t in kills:
            lines.append(f"| {t['trial']} | {t['world_size']} | {t['moment']} | {t['target']} | {t['at_seconds']} | "
                         f"{'yes' if t['during_checkpoint'] else 'no'} | "
                         f"{', '.join(f'({a}, {b})' for a, b in t['resumed_at']) or 'not killed'} | {t['attempts']} | "
                         f"{'yes' if t['bit_exact'] else 'NO'} | {t['samples_repeated']} / {t['samples_skipped']} |")
    for rerun in r.get("reruns", []):
        lines += ["", f"Partial rerun on {rerun['date'][:16].replace('T', ' ')} UTC (after a fix, or with added cases), replacing only these figures: "
                  f"{', '.join(rerun['parts'])} ({rerun['seconds']:.0f} s)."]
    if unt.get("loaders"):
        loaders = list(dict.fromkeys(x["loader"] for x in unt["loaders"]))
        payloads = list(dict.fromkeys(x["payload"] for x in unt["loaders"]))
        cell = {(x["loader"], x["payload"]): x for x in unt["loaders"]}
        lines += ["", "Planted payloads, loader by loader (`refused`: exit 2, one `error:` line naming the file, the folder "
                  "byte-identical; `RAN`: the payload's code ran; `-`: the loader does not read that file):", "",
                  "| payload | " + " | ".join(loaders) + " |", "|---|" + "---|" * len(loaders)]
        for payload in payloads:
            row = []
            for loader in loaders:
                x = cell.get((loader, payload))
                row.append("-" if x is None else "refused" if x["refused"] else "RAN" if x["payload_ran"] else "not clean")
            lines.append(f"| {payload} | " + " | ".join(row) + " |")
    lines += ["", THREAT_MODEL, "", DETAILS, ""]
    examples = bad.get("examples", [])
    if examples:
        lines += ["Some of the error lines the fuzz produced:", "", "```", *examples, "```", ""]
    if bad.get("by_kind"):
        lines += ["Bad inputs by kind (tried, clean): " + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in bad["by_kind"].items()) + ".", ""]
    if num:
        lines += ["Numerical faults, one run each (12 steps, checkpoint every 2; the Inf gradients through the Python "
                  "API on an MLP):", "", "| fault | settings | message |",
                  "|---|---|---|"]
        lines += [f"| `{n['fault']}` | {n['what']} | `{n['message'][:140]}` |" for n in num]
        lines.append("")
    return "\n".join(lines) + "\n"


THREAT_MODEL = """## Threat model

**Trusted:** the person running `scaletrain`, the installed code and its dependencies, the command
line and config they type (a bad value there is a mistake to report, not an attack), and the other
ranks of a run they launched (ranks exchange pickled objects through `torch.distributed`, as every
PyTorch job does).

**Not trusted:** every file that may have come from somewhere else: a run folder (`config.yaml`,
`model_config.json`, `model.safetensors`, `tokenizer.json`, `summary.json`, `metrics.jsonl`), a
checkpoint (DCP `.metadata` and `*.distcp`, `rng.safetensors` or an older `rng.pt`, `trainer.json`,
`checksums.json`), a prepared data folder (`manifest.json`, `stats.json`, shards, `tokenizer.json`),
a Hugging Face model folder, and config files (YAML). A shared disk or a download can plant any of them, and the planter controls
the whole folder: checksums prove that files belong together, not who wrote them.

**What must hold:** no planted file runs code, reads or writes outside its folder, or exhausts the
machine; every such file is refused with one `error:` line naming it (exit 2) and leaves every file
as it was. Every loader goes through one package, `scaletrain.untrusted`:

| file | read by | defence |
|---|---|---|
| DCP `.metadata` (a pickle) | `train` resume, `compress` | unpickled by a restricted unpickler that builds only DCP's metadata dataclasses, `torch.Size`, dtypes and layouts (an explicit list; any other global is refused by name before it is built); every field is then type-checked, every data file it names must stay inside the checkpoint folder and be listed in `checksums.json`, every byte range must lie inside its file; stream transforms are refused |
| DCP data items | `train` resume, `compress` | a bytes entry (which DCP's default planner reads with `torch.load(weights_only=False)`) is refused wherever a tensor belongs, and everywhere for model-only loads (`compress`); the optimizer's plain values are read with torch's weights-only unpickler and must be numbers, strings or booleans; keys and shapes are compared with the model before any data is read; data that does not decode is a damaged checkpoint |
| `trainer.json`, `checksums.json`, `model_config.json`, `summary.json`, `manifest.json`, `stats.json` | every command | a size cap (256 MiB), a nesting cap (64), no `NaN`/`Infinity` constants, the expected shape and every field's type; file names inside them must stay inside their folder (no `..`, no absolute path, no symlink leading out); every file of a checkpoint must be listed in its `checksums.json` |
| `model.safetensors`, `rng.safetensors` | `eval`, `generate`, `compress`, resume | safetensors holds no code; a header that is too long, runs past the file or declares offsets outside it is one `error:` line; names, shapes and dtypes must match the model, and the model description the file records must match `model_config.json` |
| `model_config.json` | `eval`, `generate`, `compress` | the model is built on the meta device first: one whose weights exceed this machine's memory is refused before anything is allocated |
| checkpoints of another model | resume, `compress --checkpoint` | `trainer.json` records the model description; a different one is refused naming the keys (`model.rope: false in the checkpoint, true here`) |
| YAML (a file, an override, a run's `config.yaml`, `prepare --config`) | `train`, `verify`, `profile`, `plan`, `prepare`, `eval`… | size cap (1 MiB file, 64 KiB value), nesting cap (64), alias expansion counted without expanding (a billion laughs is refused in milliseconds), duplicate keys refused with their line, non-finite numbers refused in every field, error lines that never print an expanded value |
| `tokenizer.json` | `train`, `eval`, `generate` | parsed by the Rust `tokenizers` library (no code), size-capped; its vocabulary must match the model's |
| prepared data | `data verify`, `data inspect`, `data.mixture`, `prepare --merge`, training | every manifest field type-checked, totals checked against the files, every file name kept inside the folder; shards are raw token ids read as numbers (`os.pread`, `np.frombuffer`) and checked against the vocabulary |
| a Hugging Face model folder (`config.json`, `model.safetensors` or its index, `tokenizer.json`, `tokenizer_config.json`) | `train` with `model.name=hf` or `model.init_from`, `export` | `config.json` is read as JSON (checked as above); the code it may name (`auto_map`) is never run and `model.trust_remote_code=true` is refused: the architecture must be one `transformers` itself defines; weights come only from safetensors (pickled `pytorch_model.bin` and the like are refused by name), an index's file names stay inside the folder, every tensor's name and shape is checked against the model before it is copied; the tokenizer is parsed by `tokenizers` (Rust), and of `tokenizer_config.json` only the special-token strings, a few flags and the chat template (text) are kept |
| run logs | `doctor` | only JSON/YAML/JSONL, each checked as above; a damaged `metrics.jsonl` line is a finding |

Checkpoints written before `rng.safetensors` keep a torch `rng.pt`: it is read with
`torch.load(weights_only=True)`, torch's own restricted unpickler, and nothing else.

**Not defended:** a planted file that is well formed but holds wrong numbers (weights trained to
misbehave, a consistent but altered dataset) is read as data: check where your files come from.
Limits hold per file, not per command: a folder of many large, valid files takes the time and disk
it takes.

The figures above come from planting each payload (the pickles are real: unpickling one creates a
marker file, which must never appear) in a copy of a trained run or prepared folder, for every
loader that reads that file.
"""


DETAILS = """## How each figure is measured

1. **Kill anywhere.** A trial starts the run (24 steps, a checkpoint after every step, two kept;
   batches take 0.1 s to build through the `slow_data` fault, which changes no number but widens the
   training window against start-up and finish) and, at a random delay drawn between the uninterrupted
   run's first checkpoint and its end, either kills at once or waits for the next checkpoint folder
   being written (`.tmp-step_*` present) and kills then. The target is the
   whole process group (torchrun's agent and every rank, like a preempted node) or, on 2 ranks, one
   rank's worker. Then `train.resume=auto` in the same folder until the run finishes. Checked: every
   `step_*` folder left verifies against its checksums and the newest complete one before the kill is
   still there; `model.safetensors` equals the uninterrupted run of the same world size tensor by
   tensor (`torch.equal`); the sample audit recomputes, from the data position saved in each checkpoint
   a resume started from, which sample ids the kept chain of steps read, and compares that multiset
   with the uninterrupted run's (a resume one step early repeats a batch, one step late skips one;
   `tests/reliability/test_kill.py` checks that the audit sees both).
2. **World size on resume.** 4 steps on one world size, resume the step-4 checkpoint on the other, 4
   more. The global batch is kept (2 ranks x 16, or 1 process x 16 x 2 accumulation steps), so each
   step reads the same samples; only the order of the gradient reduction differs. Tolerance (asserted
   in `tests/reliability/test_dist.py`): loss within 1e-4 of the uninterrupted run at every step,
   parameters within rtol 1e-3 / atol 1e-4. In this run both directions came out bit-identical (the
   mean over two ranks' 16-sample means and the two-step accumulation add the same numbers in the same
   order); the tolerance stands for layouts whose reduction order differs.
3. **Corruption.** Every file of a gpt-tiny checkpoint (`.metadata`, `__0_0.distcp`, `rng.pt`,
   `trainer.json`, `checksums.json`) and of its prepared data (`manifest.json`, `tokenizer.json`,
   `*.bin`, `*.idx`) is truncated to half, has one bit flipped at a random offset, or is deleted, in
   several rounds; `verify_checkpoint` / `scaletrain data verify`'s `shards.verify` must report that
   file. Training also verifies every shard checksum before use (XXH3 reads ~7 GB/s here).
4. **Bad input.** `tests/reliability/hostile_cases.py` enumerates hostile and careless inputs for every
   command (YAML bombs, deep nesting and duplicate keys, non-finite and out-of-bounds values, files
   where folders belong, data with no text, damaged or edited run files, resumes that change the
   architecture), each in its own scratch folder that must come out byte-identical (contents and
   mtimes) with nothing added. `tests/reliability/bad_inputs.py` also fuzzes whole config files,
   manifests, JSONL/Parquet inputs, edited checkpoints and every subcommand's flags, and derives cases from the config schema itself
   (every key of every section: unknown keys, a word where a number belongs, values beyond each
   field's bounds), plus missing files, conflicting options, malformed overrides and command lines,
   malformed YAML (also non-UTF-8) and malformed data files (random MNIST IDX bytes, a corpus too small
   to split, a garbage shard manifest). Each runs through `scaletrain.cli.main` against an existing run
   folder (with `train.resume=auto`, so the folder itself is acceptable), whose files and mtimes must
   be unchanged; a handful also through a real subprocess.
5. **Numerical faults.** `SCALETRAIN_FAULT=nan:step=N` multiplies the loss of step N by NaN (its
   gradients become NaN too), `spike:step=N:factor=30` by 30 with `guard.spike_factor=3`. Caught means
   the warning names step N itself; `tests/reliability/test_numerics.py` also shows that a skipped NaN
   step leaves exactly the weights of the run without that step, that a rollback lowers the lr by
   `guard.lr_factor`, and that an Inf gradient with a finite loss is caught on a step that does not log.
6. **Hangs.** `stall:rank=R:step=N` makes one rank sleep; `parallel.timeout_seconds=10`; the time
   includes torchrun and model start-up. Every run in the suites runs under a timeout that kills its
   whole process group.
7. **Untrusted files.** The payload's `__reduce__` opens a marker file; the attacker rewrites
   `checksums.json` to match. Every loader (resume by path and by auto, `compress` from a checkpoint
   or `--checkpoint`, `compress`, `eval`, `generate`, `doctor`, `data verify|inspect`, `data.mixture`,
   `prepare --merge`) meets every payload that applies to what it reads (`hostile_cases.PAYLOADS`). DCP's `.metadata` is read through an allowlist unpickler, DCP's non-tensor
   items and `rng.pt` only as `weights_only` plain data, so the marker never appears;
   `resume=auto` skips such a checkpoint and says why.
8. **Disk.** A 3 MB tmpfs holds one gpt-tiny checkpoint (1.9 MB) but not two; a read-only remount of
   it. A checkpoint that cannot be written removes its partial folder and ends the run with one
   line naming the step and the last complete checkpoint.

## Failures found and fixed along the way

- A checkpoint carrying a pickle payload ran it on load (DCP reads `.metadata` with `pickle.load`
  and its bytes items with `torch.load(weights_only=False)`); now refused (`train/untrusted.py`).
- A checkpoint write on a full disk ended in a traceback and left a partial `.tmp-step_*` folder
  holding the space; a read-only run folder failed at the first write with a traceback.
- A bit flipped in the prepared data cache was trained on (only file sizes were checked at open), and
  a changed manifest field that sizes no file (`eot_id`, byte counts) went unseen: manifests now carry
  a checksum of themselves and training verifies every shard checksum.
- With `train.grad_clip=0` the guard saw the gradient norm only on logging steps, so an Inf gradient
  with a finite loss reached the weights.
- A non-UTF-8 config file ended in a traceback; `name=../../x` put the run folder outside `runs/`.
- A shard whose token ids exceed the vocabulary passed every checksum (ids written by another tool or
  a bug) and ended training in an `IndexError`; `data verify` and training now refuse it, naming the
  file and the id.
- When rank 0 stalled, rank 1 timed out but then waited in `monitored_barrier` for rank 0's answer
  for as long as rank 0 slept (the first measurement of item 6 ended only when the driver killed
  rank 0 after 96 s); the wait is now bounded and names rank 0.
- Re-saving an existing step moves the old folder aside before renaming the new one in; a kill
  between the two renames left that step only as a hidden `.old-step_N` folder that resume=auto did
  not see (none of the 20 trials hit this window; found by reading `save_checkpoint`, tested in
  `test_corruption.py`). resume=auto now puts it back.
"""


def render_only() -> None:
    from scaletrain.atomic import write_text_atomic

    results = json.loads((ROOT / "docs" / "results" / "faults.json").read_text())
    write_text_atomic(ROOT / "docs" / "reliability.md", render(results))


if __name__ == "__main__":
    if sys.argv[1:] == ["--render"]:  # the page again from docs/results/faults.json, nothing rerun
        render_only()
    else:
        with contextlib.suppress(KeyboardInterrupt):
            main()
