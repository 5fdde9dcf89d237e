"""Where the main job's FLOPs go: a profile-backed account of its MFU (issue 9, item 3).

MFU here is the default preset's model FLOP/s (flops_per_token x tokens/s) divided by the fp32
matmul peak measured on this machine (scaletrain.hardware.matmul_peak_flops, large square
matmuls, torch's default threads), as in the "Main job" section. This script says where the rest goes:

1. The step account: `scaletrain profile`'s machinery (diagnose/profile.py) runs the preset's step
   under torch.profiler; its Chrome trace is split by what each op does (benchmarks/mfu_account.py).
2. The matmul shapes: every GEMM of the step (from the model's dimensions, checked against the
   shapes a profiled Trainer.fit() actually ran), timed alone with torch.mm against the peak; the
   attention kernel (SDPA) and plain per-head matmuls likewise.
3. The levers: `scaletrain train gpt` with one setting changed per row (threads, torch.compile,
   AdamW implementation, bf16 autocast, the host read of the guard, sizes), tokens/s and MFU at
   steady state (warm-up steps, set-up, compilation and the final evaluation left out). Every row
   runs twice, in two passes (the list in order, then reversed, so that a drift of the machine
   cancels in the median), and a row counts as faster only when every run of it beats every run
   of the preset.

Writes the "mfu" section of docs/performance.md (after the main-job section) and the key
`mfu_account` of docs/results/performance.json. Speed figures need a quiet machine.

    python benchmarks/mfu.py              # the full run (about 9-10 minutes on 2 quiet cores)
    python benchmarks/mfu.py --quick --docs /tmp/mfu-docs   # a smoke run (figures meaningless)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mfu_account as acc  # noqa: E402
import mfu_report  # noqa: E402

PRESET = "gpt"
# Every run: no evaluation, checkpoint or sample inside or after the timed loop beyond one small batch.
# The account is of the fp32 step (its GEMMs against the fp32 peak); bf16 is one of the levers. Steps,
# not the preset's time budget: every run times the same steps.
QUIET = ["log.progress=false", "train.eval_every=0", "train.checkpoint_every=0", "train.final_eval_batches=1",
         "train.eval_batch_size=4", "log.sample_tokens=0", "train.max_minutes=60", "schedule.budget=steps",
         "train.precision=fp32"]


# ---- the levers ----------------------------------------------------------------------------------
# (key, what, overrides, same model as the preset, slow): a slow row runs a few steps only.
LEVERS = [
    ("preset", "the preset's step in fp32 (torch's default 2 threads, fused AdamW)", [], True, False),
    ("threads1", "1 torch thread (`train.threads=1`)", ["train.threads=1"], True, False),
    ("compile", "torch.compile (`train.compile=true`)", ["train.compile=true"], True, False),
    ("adamw_loop", "AdamW not fused (`optim.fused=false`: torch's per-tensor loop on CPU)",
     ["optim.fused=false"], True, False),
    ("guard_off", "no guard (`guard.action=off`: no per-step read of the loss)", ["guard.action=off"], True, False),
    ("bf16", "bf16 autocast (`train.precision=bf16`)", ["train.precision=bf16"], True, True),
    ("no_rope", "learned positions, no rotary (`model.rope=false`; another model)", ["model.rope=false"],
     False, False),
    ("batch8", "batch 8: M = 2,048 rows per matmul (`train.batch_size=8`; 2x tokens per step)",
     ["train.batch_size=8"], False, False),
    ("d256", "d_model 256, 4 heads (`model.d_model=256 model.n_head=4`)",
     ["model.d_model=256", "model.n_head=4"], False, False),
    ("d384", "d_model 384, 6 heads (`model.d_model=384 model.n_head=6`)",
     ["model.d_model=384", "model.n_head=6"], False, False),
]
PASSES = 2  # pass 1 runs LEVERS in order, pass 2 in reverse: the preset runs first and last


def lever_peak(overrides: list[str], fp32_peak: float) -> tuple[float, str]:
    """The matmul peak a lever's MFU is measured against: bf16's where the lever runs bf16 on a CPU
    with native bf16 (an emulated bf16 "peak" is no ceiling: MFU against it can pass 1), else fp32's."""
    from scaletrain.hardware import bf16_is_native, matmul_peak_flops

    if "train.precision=bf16" in overrides and bf16_is_native("cpu"):
        return matmul_peak_flops(torch.bfloat16, "cpu"), "bf16"
    return fp32_peak, "fp32"


def run_lever(key: str, overrides: list[str], warmup: int, timed: int, log_every: int, work: Path,
              peak: float, run_no: int) -> dict:
    run_dir = work / f"{key}-{run_no}"
    steps = warmup + timed
    cmd = [sys.executable, "-m", "scaletrain", "train", PRESET, *QUIET, f"train.run_dir={run_dir}",
           f"train.max_steps={steps}", f"log.every={log_every}", "schedule.warmup_steps=0", *overrides]
    # Its own compile cache per run: both runs of the compile row compile cold (warm-up excluded).
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           "TORCHINDUCTOR_CACHE_DIR": str(work / f"inductor-{key}-{run_no}")}
    began = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary["steps"] != steps:  # e.g. a non-finite loss stopped it: no steady-state window to time
        raise SystemExit(f"lever {key}: stopped at step {summary['steps']} of {steps} ({summary['stopped_by']})")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    elapsed = {r["step"]: r["elapsed"] for r in records if r.get("split") == "train"}
    tokens_per_step = summary["global_batch_size"] * _seq_len(run_dir)
    seconds = elapsed[steps] - elapsed[warmup]
    tps = timed * tokens_per_step / seconds
    shutil.rmtree(run_dir, ignore_errors=True)
    peak, peak_dtype = lever_peak(overrides, peak)
    return {"overrides": overrides, "warmup_steps": warmup, "timed_steps": timed, "mfu_peak": peak_dtype,
            "step_seconds": seconds / timed, "tokens_per_step": tokens_per_step, "tokens_per_second": tps,
            "flops_per_token": summary["flops_per_token"], "model_flops_per_second": tps * summary["flops_per_token"],
            "mfu": tps * summary["flops_per_token"] / peak, "first_window_seconds": elapsed[log_every],
            "parameters": summary["parameters"], "run_seconds": time.time() - began}


def _cpu_seconds() -> float:
    """CPU time of this process, all its threads (user + system)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _seq_len(run_dir: Path) -> int:
    import yaml

    return int(yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["seq_len"])


# ---- the profiled trainer: GEMM shapes it runs and its host reads ----------------------------------
def trainer_pass(steps: int, warmup: int, work: Path) -> dict:
    """Trainer.fit() under torch.profiler for `steps` steps after `warmup`: the aten::mm shapes it
    runs per step, and its host reads of tensor values (aten::_local_scalar_dense: .item(), float())."""
    from torch.profiler import ProfilerActivity, profile, schedule

    from scaletrain.config.load import load_config
    from scaletrain.train.build import build_trainer

    cfg = load_config(PRESET, [*QUIET, f"train.run_dir={work / 'trainer-pass'}",
                               f"train.max_steps={warmup + steps + 2}", "log.tensorboard=false",
                               "schedule.warmup_steps=0"])
    trainer = build_trainer(cfg)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True,
                 schedule=schedule(wait=warmup - 1, warmup=1, active=steps, repeat=1)) as prof:
        trainer.step_hook = lambda *_: prof.step()
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # its log lines
            trainer.fit()
    averages = prof.key_averages(group_by_input_shape=True)
    mm_ms = {}
    for a in averages:
        if a.key == "aten::mm" and a.input_shapes:
            k = (tuple(a.input_shapes[0]), tuple(a.input_shapes[1]))
            mm_ms[k] = mm_ms.get(k, 0.0) + a.self_cpu_time_total / 1e3 / steps
    # A host read inside Optimizer.step is the fused AdamW kernel reading each parameter's step
    # counter (a CPU scalar); the others are the loop's own (the guard's check, the log line).
    reads = {"optimizer": 0, "loop": 0}
    read_us = 0.0
    for e in prof.events():
        if e.name != "aten::_local_scalar_dense":
            continue
        parent, where = e.cpu_parent, "loop"
        while parent is not None:
            if parent.name.startswith("Optimizer.step"):
                where = "optimizer"
            parent = parent.cpu_parent
        reads[where] += 1
        read_us += e.cpu_time_total
    shutil.rmtree(work / "trainer-pass", ignore_errors=True)
    return {"mm_calls_per_step": acc.mm_shapes_per_step(averages, steps), "mm_ms_per_step": mm_ms,
            "host_reads_per_step": {k: v / steps for k, v in reads.items()},
            "host_read_ms_per_step": read_us / 1e3 / steps}


# ---- main ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: few steps; writes docs only with --docs")
    p.add_argument("--docs", type=Path, default=None, help="docs folder to write (default: the repo's docs/)")
    p.add_argument("--levers", default=None, help="comma-separated lever keys to run (default: all)")
    p.add_argument("--rewrite", action="store_true",
                   help="re-render the docs section from results/performance.json without measuring")
    a = p.parse_args(argv)
    if a.rewrite:
        return rewrite(a.docs if a.docs is not None else ROOT / "docs")
    command = " ".join(["python benchmarks/mfu.py", *(sys.argv[1:] if argv is None else argv)])
    docs = a.docs if a.docs is not None else (None if a.quick else ROOT / "docs")
    q = a.quick
    prof_steps, prof_warmup = (2, 1) if q else (10, 3)
    # warm-up, timed, log.every: the preset's step is ~0.19 s, so 40 timed steps is ~8 s a run; with
    # ~9 s of start-up per process (measured in a --quick run) the 20 runs of the two passes (bf16: 3
    # timed steps of ~3.7 s) take about 8 minutes, the whole script about 9 (issue's bound: 12).
    fp32_steps = (2, 4, 2) if q else (10, 40, 10)
    slow_steps = (1, 2, 1) if q else (1, 3, 1)
    repeats = 3 if q else 15

    from scaletrain.config.load import load_config
    from scaletrain.hardware import machine_info, matmul_peak_flops
    from scaletrain.diagnose.profile import profile
    from scaletrain.models.gpt.model import GPTArgs

    load_before = os.getloadavg()  # the only load judged: during the run it counts our own threads
    began = time.time()
    peak = matmul_peak_flops(torch.float32, "cpu")  # as the trainer reports MFU (cached per machine)
    cfg = load_config(PRESET, QUIET)
    work = Path(tempfile.mkdtemp(prefix="scaletrain-mfu-"))
    try:
        # 1. the profiled step (scaletrain profile's own loop and ranges)
        print("profiling the preset's step ...", flush=True)
        rep = profile(cfg, steps=prof_steps, warmup=prof_warmup, out=work / "profile", top=20)
        trace = json.loads((work / "profile" / "trace.json").read_text())["traceEvents"]
        account = acc.step_account(trace, prof_steps)
        del trace
        # 2. the GEMM shapes: from the model, checked against a profiled Trainer.fit(); timed alone
        print("profiling Trainer.fit() for its matmul shapes and host reads ...", flush=True)
        tpass = trainer_pass(prof_steps, max(2, prof_warmup), work)
        d, t = cfg.model, cfg.train
        args = GPTArgs(vocab_size=cfg.data.vocab_size, seq_len=cfg.data.seq_len, n_layer=d.n_layer,
                       n_head=d.n_head, d_model=d.d_model, d_ff=d.d_ff, rope=d.rope)
        gemms = acc.model_gemms(args, t.batch_size)
        print("timing the model's matmul shapes and attention alone ...", flush=True)
        cpu0, wall0 = _cpu_seconds(), time.perf_counter()
        acc.time_gemms(gemms, repeats)
        squares = acc.square_rates((1024, 2048), repeats)
        attention = acc.time_attention(args, t.batch_size, repeats)
        # Did the timings get their cores? A process that shares a core with another job gets less
        # CPU time than wall time x threads, and its 2-thread matmuls wait for the slower thread:
        # one busy competitor made these shapes 0.6 of the peak (81-92 ms per step -> 142 ms).
        timing_cpu_share = (_cpu_seconds() - cpu0) / ((time.perf_counter() - wall0) * torch.get_num_threads())
        # 3. the levers
        chosen = a.levers.split(",") if a.levers else [k for k, *_ in LEVERS]
        order = [lever for lever in LEVERS if lever[0] in chosen]
        runs: dict[str, list[dict]] = {lever[0]: [] for lever in order}
        schedule = [(pass_no, lever) for pass_no in range(1, PASSES + 1)
                    for lever in (order if pass_no % 2 else order[::-1])]
        for position, (pass_no, (key, what, overrides, _, slow)) in enumerate(schedule):
            w, n, every = slow_steps if slow else fp32_steps
            print(f"pass {pass_no}, lever {key}: {what} ...", flush=True)
            run = run_lever(key, overrides, w, n, every, work, peak, len(runs[key]))
            runs[key].append({"pass": pass_no, "position": position, **run})
            print(f"  {run['tokens_per_second']:,.0f} tok/s, MFU {run['mfu']:.3f}", flush=True)
        levers = {key: {"what": what, "same_model": same_model, "slow": slow,
                        **mfu_report.combine_runs(runs[key])}
                  for key, what, _, same_model, slow in order}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    import scaletrain

    result = mfu_report.assemble(
        cfg=cfg, args=args, peak=peak, profile_report=rep, account=account, trainer=tpass, gemms=gemms,
        squares=squares, attention=attention, levers=levers)
    result.update({
        "command": command, "quick": q, "profiled_steps": prof_steps, "profiled_warmup": prof_warmup,
        "minutes": round((time.time() - began) / 60, 1),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg()),
                         "judged": "before (the after-value includes this benchmark's own threads)"},
        "torch_threads": torch.get_num_threads(), "timing_repeats": repeats,
        "timing_cpu_share": timing_cpu_share,
        "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "versions": {"scaletrain": scaletrain.__version__, "torch": torch.__version__,
                     "python": sys.version.split()[0]},
    })
    section = mfu_report.section(result)
    print(section)
    if docs is not None:
        write_docs(result, section, docs)
        print(f"wrote {docs / 'performance.md'} and {docs / 'results' / 'performance.json'} (mfu_account)")
    return 0


def rewrite(docs: Path) -> int:
    """Re-render the section from the stored figures (after a change to the report's wording or
    verdict rules), without measuring."""
    from docs_out import write_section

    result = json.loads((docs / "results" / "performance.json").read_text())["mfu_account"]
    mfu_report.compare_levers(result["levers"])
    # Only the text: the JSON keeps the stamp (commit, time) of the run that measured the figures.
    write_section(docs / "performance.md", mfu_report.START, mfu_report.END, mfu_report.section(result),
                  after="<!-- main-job:end -->")
    return 0


def write_docs(result: dict, section: str, docs: Path) -> None:
    from docs_out import merge_results, write_section

    merge_results(docs / "results" / "performance.json", {"mfu_account": result})
    write_section(docs / "performance.md", mfu_report.START, mfu_report.END, section,
                  after="<!-- main-job:end -->")  # right after the main job, which it explains


if __name__ == "__main__":
    raise SystemExit(main())
