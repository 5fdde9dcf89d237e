"""The GPU check: what must hold on CUDA, in one script that fits in 8 minutes on one H100/H200.

On the GPU machine, from the repository root (nothing is downloaded there; its own torch is used):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site     # only where pydantic is missing
    python3 -m pip install -q --no-deps --no-build-isolation -e .        # optional: src/ is put on the path
    python3 benchmarks/gpu_check.py "$OUT"

`.whl/` holds the wheels of what the project needs and such a machine lacks (on this project's
H200 image: pydantic and its own needs), fetched where a registry can be reached:

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \\
        typing-extensions==4.16.0

The checks, most important first, each under its own time limit inside the overall budget
(`--budget`, 470 s): a check that no longer fits is recorded as skipped.

1. environment — the GPU, torch and CUDA versions; fused AdamW is chosen for CUDA parameters.
2. collectives — on a 1-rank `cpu:gloo,cuda:nccl` group made by `init_distributed("cuda")`, the
   trainer's own collectives (the guard's verdict, gathered floats, rank 0's decisions, gathered
   objects) and an async checkpoint (DCP on the group's gloo side) run, watched by
   tests/distributed/collective_probe.py: every tensor on cuda:0, made on `collective_device()`.
3. gpt — `scaletrain train gpt` in bf16 with `train.compile=true` (40 steps, a checkpoint on the
   way): the loss falls, MFU and peak memory recorded.
4. llama — the same for the `llama` preset, with `checkpoint.async_save=true`.
5. memory — `scaletrain plan --device <this GPU> --json` against summary.json's
   `peak_memory_bytes` (`torch.cuda.max_memory_allocated`), for an eager bf16 `gpt` run and the two
   compiled runs (compilation fuses activations away: the plan counts eager ones).
6. fsdp-one-rank — `parallel.strategy=fsdp` on one rank under torchrun, bf16, with the collective
   probe (`--expect cuda`); a layout refused on one rank is recorded with its error line.
7. resume — gpt-tiny in fp32 on the GPU, 20 steps, against 10 + 10 resumed from an async
   checkpoint: bit for bit when the kernels are deterministic (recorded, not required).
8. benchmark — `benchmarks/gpu.py --write` (GPT-2 small and `llama` through the CLI): tokens/s and
   MFU against the datasheet and measured peaks; its docs/performance.md section and
   docs/results/performance.json come back in OUT.

OUT receives: gpu_check.json (every check: ok, figures, error lines), gpu_check.log (every
command's output), collectives-rank0.json (the probe of check 6), gpu_collectives.json (check 2),
gpu_benchmark.json, performance.md and performance.json (check 8). Exit 0 when every check that
ran passed, 1 otherwise, 2 without a CUDA GPU (which it says).

`--device cpu` runs the same plumbing on a machine without a GPU (fp32, no compilation, gloo, no
benchmark): a check of this script, not of the GPU path.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PROBE = ROOT / "tests" / "distributed" / "collective_probe.py"
WORK = Path("/tmp/scaletrain-gpu-check")

QUIET = ["log.progress=false", "log.tensorboard=false", "log.sample_tokens=0", "train.eval_every=0",
         "train.final_eval_batches=2", "train.device=cuda", "schedule.budget=steps"]
BF16_COMPILE = ["train.precision=bf16", "train.compile=true"]
CPU_SMOKE = ["train.device=cpu", "train.precision=fp32", "train.compile=false", "train.threads=1"]  # --device cpu


class Check:
    """Runs commands, logs their output, keeps the results and the time budget."""

    def __init__(self, out: Path, budget: float):
        self.out, self.deadline = out, time.monotonic() + budget
        self.results: dict[str, dict] = {}
        self.log = open(out / "gpu_check.log", "w", encoding="utf-8")  # noqa: SIM115 - closed in finish()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
                    "TORCHINDUCTOR_CACHE_DIR": str(WORK / "inductor"),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, command: list[str], timeout: float) -> tuple[int, str]:
        """(exit code, output) of a command; 124 when it ran past `timeout` or the budget."""
        limit = min(timeout, max(self.left(), 1.0))
        self.log.write(f"\n===== {name}: {' '.join(map(str, command))}\n")
        self.log.flush()
        began = time.monotonic()
        try:
            proc = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=limit,
                                  env=self.env, cwd=WORK)
            code, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            code = 124
            output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            output += f"\n[timed out after {limit:.0f} s]"
        self.log.write(output + f"\n===== {name}: exit {code} in {time.monotonic() - began:.1f} s\n")
        self.log.flush()
        return code, output

    def record(self, name: str, fn, minimum: float) -> None:
        """Run one check unless fewer than `minimum` seconds are left."""
        if self.left() < minimum:
            self.results[name] = {"ok": None, "skipped": f"out of time ({self.left():.0f} s left, needs ~{minimum:.0f})"}
            return
        began = time.monotonic()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - a broken check is reported, the others still run
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        result["seconds"] = round(time.monotonic() - began, 1)
        self.results[name] = result
        print(f"{name}: {'ok' if result.get('ok') else 'FAILED' if result.get('ok') is False else 'see json'} "
              f"({result['seconds']} s)", flush=True)
        self.save()

    def save(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=1, default=str))


def last_error(output: str) -> str:
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1][:400]


# ---- the checks ------------------------------------------------------------------------------------


def environment() -> dict:
    import torch

    sys.path.insert(0, str(SRC))
    from scaletrain.optim.param_groups import param_groups
    from scaletrain.optim.registry import build_optimizer

    model = torch.nn.Linear(64, 64, device="cuda")
    optimizer = build_optimizer("adamw", param_groups(model, 0.1, {}), lr=1e-3, weight_decay=0.1)
    fused = all(group.get("fused") for group in optimizer.param_groups)
    return {"ok": fused, "gpu": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
            "memory_bytes": torch.cuda.get_device_properties(0).total_memory, "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": sys.version.split()[0], "fused_adamw_on_cuda": fused,
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None}


def collectives(check: Check, device: str) -> dict:
    out = check.out / "gpu_collectives.json"
    code, output = check.run("collectives", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                             "--nproc-per-node", "1", Path(__file__), out, "--collectives-worker",
                                             "--device", device], timeout=120)
    result = json.loads(out.read_text()) if out.exists() else {}
    result["ok"] = code == 0 and result.get("violations") == [] and result.get("checks_passed", False)
    if code != 0:
        result["error"] = last_error(output)
    return result


def collectives_worker(out: Path, device: str) -> int:
    """One torchrun rank: the trainer's collectives on the CUDA group, watched (check 2)."""
    import torch

    sys.path.insert(0, str(SRC))
    sys.path.insert(0, str(PROBE.parent))
    from collective_probe import Watch

    from scaletrain.config.schema import GuardConfig
    from scaletrain.parallel.dist import collective_device, init_distributed, shutdown
    from scaletrain.train import checkpoint as ckpt
    from scaletrain.train import ranks
    from scaletrain.train.guard import Guard

    info = init_distributed(device, 60.0)
    watch = Watch(torch.device("cuda", info.local_rank) if device == "cuda" else torch.device("cpu")).install()
    report: dict = {"device": str(info.device), "collective_device": str(collective_device())}
    try:
        import torch.distributed as dist

        report["backend"] = str(dist.get_backend())
        guard = Guard(GuardConfig(), distributed=True)
        report["guard_good"] = guard.verdict(torch.tensor(1.0, device=info.device), None) is None
        report["guard_nan"] = guard.verdict(torch.tensor(float("nan"), device=info.device), None) is not None
        report["gathered"] = ranks.gather_floats(2.5)
        report["on_main"] = ranks.on_main(lambda: "rank 0's answer")
        report["objects"] = ranks.gather_objects({"rank": info.rank})
        model = torch.nn.Linear(32, 32, device=info.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device == "cuda")
        model(torch.randn(4, 32, device=info.device)).sum().backward()
        optimizer.step()
        root = out.parent / "collectives-checkpoints"
        shutil.rmtree(root, ignore_errors=True)
        ckpt.save_checkpoint(root, 1, model, optimizer, {"position": 1}, keep_last=2, async_save=True)
        with torch.no_grad():
            model.weight.add_(1.0)  # after the save: the checkpoint must hold the value before
        path = ckpt.finish_pending_save()
        report["async_checkpoint_problems"] = ckpt.verify_checkpoint(path)
        other = torch.nn.Linear(32, 32, device=info.device)
        ckpt.load_checkpoint(path, other, torch.optim.AdamW(other.parameters(), lr=1e-3, fused=device == "cuda"))
        report["async_checkpoint_exact"] = bool(torch.equal(other.weight + 1.0, model.weight))
        report["checks_passed"] = bool(report["guard_good"] and report["guard_nan"] and report["gathered"] == [2.5]
                                       and report["on_main"] == "rank 0's answer" and not report["async_checkpoint_problems"]
                                       and report["async_checkpoint_exact"])
    finally:
        watch.uninstall()
        report.update(watch.report())
        out.write_text(json.dumps(report, indent=1, default=str))
        shutdown()
    return 0 if report.get("checks_passed") and not report["violations"] else 1


def train_run(check: Check, name: str, preset: str, overrides: list[str], timeout: float) -> dict:
    run_dir = WORK / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    args = [*overrides, f"train.run_dir={run_dir}", f"data.cache_dir={WORK / 'data'}"]
    code, output = check.run(name, [sys.executable, "-m", "scaletrain", "train", preset, *args], timeout)
    result: dict = {"command": "scaletrain train " + " ".join([preset, *overrides]), "exit": code}
    if code != 0 or not (run_dir / "summary.json").exists():
        return {**result, "ok": False, "error": last_error(output)}
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("split") == "train"]
    losses = [r["loss"] for r in train]
    speeds = [r["tokens_per_second"] for r in train if "tokens_per_second" in r]
    result.update(
        first_loss=losses[0], last_loss=losses[-1], val_loss=summary.get("val_loss"), steps=summary["steps"],
        tokens_per_second=statistics.median(speeds[1:] or speeds), mfu_measured_peak=summary["mfu"],
        peak_memory_bytes=summary["peak_memory_bytes"], parameters=summary["parameters"],
        checkpoints=sorted(p.name for p in (run_dir / "checkpoints").iterdir()) if (run_dir / "checkpoints").is_dir() else [],
        run_dir=str(run_dir))
    result["ok"] = all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    return result


def plan_memory(check: Check, name: str, run: dict, preset: str, overrides: list[str], device: str) -> dict:
    code, output = check.run(f"plan {name}", [sys.executable, "-m", "scaletrain", "plan", preset, *overrides,
                                              "--world-size", "1", "--device", device, "--json", "--all"], 120)
    if code != 0:
        return {"ok": False, "error": last_error(output)}
    plan = json.loads(output[output.index("{"):output.rindex("}") + 1])
    batch = next((int(o.split("=")[1]) for o in reversed(overrides) if o.startswith("train.batch_size=")), None)
    same = [c for c in plan["candidates"] if c["strategy"] == "single" and not c["activation_checkpointing"]
            and not c["cpu_offload"] and c["grad_accum"] == 1 and (batch is None or c["micro_batch"] == batch)]
    if not same:
        same = [c for c in plan["candidates"] if c["strategy"] == "single" and c["grad_accum"] == 1]
    predicted = same[0]["memory"]["peak"] if same else None
    measured = run.get("peak_memory_bytes")
    return {"ok": predicted is not None and measured is not None, "predicted_bytes": predicted,
            "measured_bytes": measured, "measured_over_predicted": measured / predicted if predicted and measured else None,
            "plan_terms": same[0]["memory"] if same else None}


def fsdp_one_rank(check: Check, smoke: list[str], device: str) -> dict:
    """fsdp on one torchrun rank, watched by the probe; when one rank is refused for fsdp, the same
    run as `single` under torchrun (a 1-rank CUDA group: object collectives, DCP) so the probe still
    watches a real training."""
    result: dict = {}
    for strategy in ("fsdp", "single"):
        run_dir = WORK / "runs" / f"one-rank-{strategy}"
        shutil.rmtree(run_dir, ignore_errors=True)
        (check.out / "collectives-rank0.json").unlink(missing_ok=True)
        args = ["train", "gpt-tiny", *QUIET, "train.precision=bf16", "train.max_steps=20", "log.every=5",
                "train.checkpoint_every=10", f"parallel.strategy={strategy}", "parallel.nproc=1",
                f"train.run_dir={run_dir}", f"data.cache_dir={WORK / 'data'}", *smoke]
        code, output = check.run(f"one-rank {strategy}", [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", PROBE,
            "--out", check.out, "--expect", device, "--", *args], 180)
        probe = check.out / "collectives-rank0.json"
        report = json.loads(probe.read_text()) if probe.exists() else {}
        wrong = {"cpu"} if device == "cuda" else {"cuda:0"}
        entry = {"exit": code, "violations": report.get("violations"), "calls": report.get("calls"),
                 "devices": report.get("devices"),
                 "ok": code == 0 and report.get("violations") == [] and not set(report.get("devices", {})) & wrong}
        if code != 0:
            entry["error"] = last_error(output)  # a layout refused on one rank: its error line
        result[strategy] = entry
        if code == 0:
            break
    result["ok"] = result["fsdp"]["ok"]
    if not result["ok"] and result.get("single", {}).get("ok"):
        result["note"] = ("fsdp was refused on one rank (see its error); the probe watched the same run "
                          "as single under torchrun instead")
    return result


def resume_on_gpu(check: Check, smoke: list[str]) -> dict:
    common = ["gpt-tiny", *QUIET, "train.precision=fp32", "log.every=5", "train.checkpoint_every=10",
              "checkpoint.async_save=true", "schedule.name=constant", f"data.cache_dir={WORK / 'data'}", *smoke]
    whole, halves = WORK / "runs" / "resume-whole", WORK / "runs" / "resume-halves"
    for d in (whole, halves):
        shutil.rmtree(d, ignore_errors=True)
    steps = [("resume-whole", [*common, "train.max_steps=20", f"train.run_dir={whole}"]),
             ("resume-first", [*common, "train.max_steps=10", f"train.run_dir={halves}"]),
             ("resume-second", [*common, "train.max_steps=20", f"train.run_dir={halves}", "train.resume=auto"])]
    for name, args in steps:
        code, output = check.run(name, [sys.executable, "-m", "scaletrain", "train", *args], 120)
        if code != 0:
            return {"ok": False, "error": f"{name}: {last_error(output)}"}
    from safetensors.torch import load_file

    a, b = load_file(whole / "model.safetensors"), load_file(halves / "model.safetensors")
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    return {"ok": True, "bit_exact": diff == 0.0, "max_abs_difference": diff,
            "note": "informational: CUDA kernels (SDPA backward, atomics) need not be deterministic"}


def benchmark(check: Check) -> dict:
    out = check.out / "gpu_benchmark.json"
    code, output = check.run("benchmark", [sys.executable, ROOT / "benchmarks" / "gpu.py", "--write", "--json", out,
                                           "--cache-dir", WORK / "data", "--work", WORK / "bench",
                                           "--timeout", str(max(check.left() / 2 - 10, 60))], timeout=check.left() - 5)
    for name, source in (("performance.md", ROOT / "docs" / "performance.md"),
                         ("performance.json", ROOT / "docs" / "results" / "performance.json")):
        if source.exists():
            shutil.copy(source, check.out / name)
    result = json.loads(out.read_text()) if out.exists() else {}
    cases = result.get("gpu_cases", [])
    summary = {c["case"]: {k: c.get(k) for k in ("tokens_per_second", "mfu_datasheet", "mfu_measured_peak", "error")}
               for c in cases}
    return {"ok": code == 0, "cases": summary, **({"error": last_error(output)} if code != 0 else {})}


def plan_device(gpu_name: str) -> str:
    lowered = gpu_name.lower()
    return next((key for key in ("h200", "h100", "a100") if key in lowered), "h100")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder for the results ($OUT on the device machine)")
    ap.add_argument("--budget", type=float, default=470.0, help="seconds for every check together")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: run the plumbing without a GPU (a check of this script)")
    ap.add_argument("--collectives-worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.collectives_worker:
        return collectives_worker(a.out, a.device)
    import torch

    a.out.mkdir(parents=True, exist_ok=True)
    smoke = CPU_SMOKE if a.device == "cpu" else []
    if a.device == "cuda" and not torch.cuda.is_available():
        message = "no CUDA GPU is present here (torch.cuda.is_available() is False): nothing was checked"
        (a.out / "gpu_check.json").write_text(json.dumps({"gpu": None, "message": message}, indent=1))
        print(f"error: {message}", file=sys.stderr)
        return 2
    WORK.mkdir(parents=True, exist_ok=True)
    check = Check(a.out, a.budget)
    device = plan_device(torch.cuda.get_device_name()) if a.device == "cuda" else "cpu"
    steps = ["train.max_steps=40", "log.every=10", "schedule.warmup_steps=5", "train.checkpoint_every=20"]
    small = []  # --device cpu: the same runs, cut to what 2 cores do in seconds
    if smoke:
        small = [*smoke, "train.max_steps=4", "log.every=1", "schedule.warmup_steps=1", "train.checkpoint_every=2",
                 "data.max_bytes=1000000", "model.n_layer=1", "data.seq_len=64", "train.eval_batch_size=4"]
    gpt = [*QUIET, *BF16_COMPILE, *steps, "data.max_bytes=8000000", "train.batch_size=16", *small]
    llama = [*QUIET, *BF16_COMPILE, *steps, "checkpoint.async_save=true", *small]
    eager = [*QUIET, "train.precision=bf16", "train.max_steps=10", "log.every=5", "schedule.warmup_steps=2",
             "data.max_bytes=8000000", "train.batch_size=16", *small]

    if a.device == "cuda":
        check.record("environment", environment, 10)
    check.record("collectives", lambda: collectives(check, a.device), 40)
    check.record("gpt", lambda: train_run(check, "gpt", "gpt", gpt, 200), 90)
    check.record("llama", lambda: train_run(check, "llama", "llama", llama, 200), 90)

    def memory() -> dict:
        runs = {"gpt-eager": (train_run(check, "gpt-eager", "gpt", eager, 90), "gpt", eager)}
        for name, preset, overrides in (("gpt", "gpt", gpt), ("llama", "llama", llama)):
            if check.results.get(name, {}).get("peak_memory_bytes"):
                runs[name] = (check.results[name], preset, overrides)
        out = {name: plan_memory(check, name, run, preset, overrides, device) for name, (run, preset, overrides)
               in runs.items()}
        return {"ok": all(r["ok"] for r in out.values()), "device_table": device, **out}

    check.record("memory", memory, 60)
    check.record("fsdp-one-rank", lambda: fsdp_one_rank(check, smoke, a.device), 40)
    check.record("resume", lambda: resume_on_gpu(check, smoke), 45)
    if a.device == "cuda":
        check.record("benchmark", lambda: benchmark(check), 150)
    check.save()
    check.log.close()
    failed = [name for name, r in check.results.items() if r.get("ok") is False]
    print(f"gpu check: {len(check.results) - len(failed)} of {len(check.results)} without failure"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f"; results in {a.out / 'gpu_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
