"""benchmarks/mfu.py's arithmetic and its section of docs/performance.md.

`assemble` turns the measurements into the account (JSON-ready); `section` writes the Markdown.
Every figure in the section comes from `assemble`'s dictionary; the sentences only choose words
from the numbers (which lever pays, which part is largest).
"""

from __future__ import annotations

from collections import Counter
from statistics import median

import mfu_account as acc

START, END = "<!-- mfu:start -->", "<!-- mfu:end -->"
NON_MATMUL = ("loss", "layer norm", "activation", "embedding", "elementwise", "other ops", "optimizer", "data")
PAYS = 1.05  # a same-model lever counts as paying from +5 % tokens/s (the bar)
CPU_SHARE_OK = 0.9  # below this the standalone timings shared their cores (measured: 0.95-0.98 alone, 0.63
# with one busy competitor)
MEDIAN_OF = ("step_seconds", "tokens_per_second", "model_flops_per_second", "mfu")


def combine_runs(runs: list[dict]) -> dict:
    """One lever row from its runs: the median of each speed figure (of two runs, their mean), the
    runs themselves, and their spread ((max - min) / median of tokens/s)."""
    row = {k: v for k, v in runs[0].items() if k not in (*MEDIAN_OF, "pass", "position", "run_seconds",
                                                             "first_window_seconds")}
    for k in MEDIAN_OF:
        row[k] = median(r[k] for r in runs)
    tps = [r["tokens_per_second"] for r in runs]
    row["spread"] = (max(tps) - min(tps)) / row["tokens_per_second"]
    row["runs"] = runs
    return row


def compare_levers(levers: dict) -> tuple[float | None, float | None, float | None]:
    """Add to each row its ratio to the preset (medians), whether its runs disagree more than the
    preset's own runs do (`noisy`), and a verdict against the preset's runs (`verdict`):
    "faster" only when every run of the row beats every preset run by 5 % or more (single runs here
    scatter by 10-20 % on a shared VM, so a smaller or overlapping gain is not called one), "slower"
    likewise the other way, else "unclear". Returns the preset's median tokens/s, MFU and spread."""
    base = levers.get("preset")
    if base is None:
        for row in levers.values():
            row.update(vs_preset_tokens_per_second=None, vs_preset_mfu=None, noisy=None, verdict=None)
        return None, None, None
    base_runs = [r["tokens_per_second"] for r in base["runs"]]
    base_mfus = [r["mfu"] for r in base["runs"]]
    for key, row in levers.items():
        row["vs_preset_tokens_per_second"] = row["tokens_per_second"] / base["tokens_per_second"]
        row["vs_preset_mfu"] = row["mfu"] / base["mfu"]
        row["noisy"] = key != "preset" and row["spread"] > base["spread"]
        # Another model or batch is judged on MFU (its tokens/s is not the preset's work).
        mine = [r["tokens_per_second"] if row["same_model"] else r["mfu"] for r in row["runs"]]
        theirs = base_runs if row["same_model"] else base_mfus
        ratio = row["vs_preset_tokens_per_second"] if row["same_model"] else row["vs_preset_mfu"]
        if key == "preset":
            row["verdict"] = None
        elif min(mine) >= PAYS * max(theirs):
            row["verdict"] = "faster"
        elif max(mine) <= min(theirs) / PAYS:
            row["verdict"] = "slower"
        else:
            row["verdict"] = "unclear"
    return base["tokens_per_second"], base["mfu"], base["spread"]


def _shape_key(g: dict) -> str:
    return f"{g['a'][0]}x{g['a'][1]} @ {g['b'][0]}x{g['b'][1]}"


def assemble(*, cfg, args, peak, profile_report, account, trainer, gemms, squares, attention, levers) -> dict:
    from scaletrain.models.gpt.model import GPT

    tokens = cfg.train.batch_size * cfg.data.seq_len
    flops_per_token = GPT(args).flops_per_token()
    model_flops = flops_per_token * tokens
    mm_flops = sum(g["flops"] * g["count"] for g in gemms)
    attn_flops = attention["train_flops"] * args.n_layer
    sec = account["seconds_per_step"]
    wall = account["wall_seconds_per_step"]
    mm_alone = sum(g["seconds"] * g["count"] for g in gemms)
    sdpa_alone = attention["sdpa_train_seconds"] * args.n_layer
    gap = {  # seconds per step; they add up to the profiled step
        "model FLOPs at the peak rate": model_flops / peak,
        "(a) non-matmul work (no model FLOPs)": sum(sec[c] for c in NON_MATMUL),
        # Profiled time minus FLOPs at the peak rate: below zero only if the step's matmuls ran
        # faster than the measured peak, i.e. the peak itself was measured low.
        "(b) matmuls and attention below peak": sec["matmul"] + sec["attention"] - (mm_flops + attn_flops) / peak,
        "(c) dispatch and Python": sec["dispatch"] + sec["python"],
    }
    # (b) by op, and each op's part split into "its shapes" (timed alone) and "in the model" (the
    # rest) only when both parts come out >= 0: a standalone timing slower than the same op in the
    # model says the standalone timing was disturbed, not that the model is faster than its shapes.
    b_parts = {}
    for op, profiled, alone, flops in (("matmuls", sec["matmul"], mm_alone, mm_flops),
                                       ("attention", sec["attention"], sdpa_alone, attn_flops)):
        shape, in_model = alone - flops / peak, profiled - alone
        b_parts[op] = {"below_peak": profiled - flops / peak, "alone_below_peak": shape,
                       "in_model_beyond_alone": in_model, "split": shape >= 0 and in_model >= 0}
    # The same GEMMs grouped by operand shapes, as the trainer's profile reports them (forward and
    # input-gradient products of a square layer share a shape).
    expected: Counter = Counter()
    alone_by_shape: dict = {}
    for g in gemms:
        k = (tuple(g["a"]), tuple(g["b"]))
        expected[k] += g["count"]
        alone_by_shape[k] = alone_by_shape.get(k, 0.0) + g["seconds"] * g["count"]
    seen = trainer["mm_calls_per_step"]
    shapes_match = {k: round(v, 6) for k, v in expected.items()} == {k: round(v, 6) for k, v in seen.items()}
    for g in gemms:
        k = (tuple(g["a"]), tuple(g["b"]))
        calls = seen.get(k, 0)
        g["in_model_seconds"] = trainer["mm_ms_per_step"].get(k, 0.0) / 1e3 / calls if calls else None
    base_tps, base_mfu, base_spread = compare_levers(levers)
    unprofiled = levers["preset"]["step_seconds"] if "preset" in levers else None
    ops = account["ops"]
    return {
        "definition": "MFU = flops_per_token x tokens/s / fp32 matmul peak measured here (torch's default "
                      "threads); (a)-(c) and the peak-rate part add up to the profiled step",
        "preset": {"name": "gpt", "batch_size": cfg.train.batch_size, "seq_len": cfg.data.seq_len,
                   "d_model": args.d_model, "n_layer": args.n_layer, "n_head": args.n_head, "d_ff": args.d_ff,
                   "vocab_size": args.vocab_size, "tokens_per_step": tokens, "flops_per_token": flops_per_token},
        "peak_flops_fp32": peak,
        "square_matmul_flops_this_run": {str(n): v for n, v in squares.items()},
        "model_flops_per_step": model_flops, "matmul_flops_per_step": mm_flops,
        "attention_flops_per_step": attn_flops,
        "profiled_step_seconds": wall, "profiled_step_sum_of_categories": account["sum_seconds_per_step"],
        "profile_phase_seconds": profile_report["phases_seconds_per_step"],
        "unprofiled_step_seconds": unprofiled,
        "mfu_profiled_step": model_flops / peak / wall,
        "mfu_unprofiled": model_flops / peak / unprofiled if unprofiled else None,
        "categories_seconds_per_step": sec,
        "category_flops_per_step": {"matmul": mm_flops, "attention": attn_flops},
        "gap_seconds_per_step": gap, "gap_b_by_op_seconds_per_step": b_parts,
        "top_ops": ops[:40],
        "sdpa_ops": [o["name"] for o in ops if "scaled_dot_product" in o["name"]],
        "gemms": [{**{k: v for k, v in g.items()}, "shape": _shape_key(g)} for g in gemms],
        "gemm_shapes_match_trainer_profile": shapes_match,
        "trainer_mm_calls_per_step": {f"{a} @ {b}": v for (a, b), v in seen.items()},
        "matmul_seconds_alone_per_step": mm_alone,
        "attention": {**attention, "sdpa_alone_seconds_per_step": sdpa_alone},
        "host_reads_per_step": trainer["host_reads_per_step"],
        "host_read_ms_per_step": trainer["host_read_ms_per_step"],
        "levers": levers, "levers_baseline_tokens_per_second": base_tps, "levers_baseline_mfu": base_mfu,
        "levers_baseline_spread": base_spread,
    }


# ---- Markdown -----------------------------------------------------------------------------------
def _pct(x: float, total: float) -> str:
    return f"{100 * x / total:.1f} %"


def _g(flops_per_s: float) -> str:
    return f"{flops_per_s / 1e9:.1f}"


def section(r: dict) -> str:
    m, pr, peak = r["machine"], r["preset"], r["peak_flops_fp32"]
    wall, sec = r["profiled_step_seconds"], r["categories_seconds_per_step"]
    flops = r["category_flops_per_step"]
    lines = [START, "## Where the time goes: MFU account", "",
             f"The default preset (`scaletrain train` = `gpt`: d_model {pr['d_model']}, {pr['n_layer']} layers, "
             f"{pr['n_head']} heads, vocabulary {pr['vocab_size']:,}, batch {pr['batch_size']} x {pr['seq_len']} = "
             f"{pr['tokens_per_step']:,} tokens per step, {pr['flops_per_token'] / 1e6:.2f} MFLOP per token). "
             f"MFU = model FLOP/s ÷ the fp32 matmul peak measured on this machine ({_g(peak)} GFLOP/s, large "
             "square matmuls, torch's default threads), as in the main-job section.", ""]
    if r["quick"]:
        lines += ["**Smoke run (`--quick`): too few steps for any figure below to mean anything.**", ""]

    # 1. the step account
    lines += ["### One training step, by what its ops do", "",
              f"`scaletrain profile`'s loop (diagnose/profile.py: data, forward, backward, optimizer ranges) "
              f"over {r['profiled_steps']} steps of the preset after {r['profiled_warmup']} warm-up steps, its "
              "Chrome trace split by op (self time, so nothing counts twice; benchmarks/mfu_account.py).", "",
              "| part | ms per step | share | model FLOPs per step | achieved GFLOP/s | of peak | what |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for c in acc.CATEGORIES:
        s = sec[c]
        f = flops.get(c)
        rate = f / s if f and s else None
        lines.append(f"| {c} | {1e3 * s:.2f} | {_pct(s, wall)} | {f'{f / 1e9:.2f} G' if f else '0'} | "
                     f"{_g(rate) if rate else '–'} | {f'{rate / peak:.2f}' if rate else '–'} | {acc.ABOUT[c]} |")
    lines.append(f"| **step** | **{1e3 * wall:.2f}** | 100 % | {r['model_flops_per_step'] / 1e9:.2f} G | "
                 f"{_g(r['model_flops_per_step'] / wall)} | {r['mfu_profiled_step']:.2f} | profiled |")
    lines.append("")
    check = (f"Cross-check: the parts add up to {1e3 * r['profiled_step_sum_of_categories']:.2f} ms against the "
             f"traced step's {1e3 * wall:.2f} ms; the profiler's own phase timers read "
             f"{1e3 * sum(r['profile_phase_seconds'].values()):.2f} ms")
    if r["unprofiled_step_seconds"]:
        over = wall - r["unprofiled_step_seconds"]
        check += ("; the same step without the profiler (the preset row of the levers table, median of its "
                  f"runs) takes "
                  f"{1e3 * r['unprofiled_step_seconds']:.2f} ms (MFU {r['mfu_unprofiled']:.2f}; the trainer's "
                  "loop, with its guard, prefetch thread and logging, against `scaletrain profile`'s), so the "
                  f"profiled step differs from it by {1e3 * over:+.2f} ms ({_pct(over, wall)})")
    lines += [check + ".", ""]

    # 2. where the gap goes
    gap = r["gap_seconds_per_step"]
    useful = gap["model FLOPs at the peak rate"]
    lines += ["### Where the rest of the peak goes", "",
              f"The profiled step split into the time its model FLOPs would take at the peak rate "
              f"({_pct(useful, wall)} of the step: its MFU) and what stretches it; each line is ms per step "
              "and its share of the step.", "",
              "| part | ms per step | share of the step |", "|---|---:|---:|"]
    for k, v in gap.items():
        lines.append(f"| {k} | {1e3 * v:.2f} | {_pct(v, wall)} |")
    lines += [f"| total (the profiled step) | {1e3 * sum(gap.values()):.2f} | {_pct(sum(gap.values()), wall)} |", ""]
    lines += [_b_by_op(r), ""]

    # 3. the GEMM shapes
    sq = r["square_matmul_flops_this_run"]
    lines += ["### The matmul shapes the model runs, timed alone", "",
              "Every `aten::mm` of one step (rows = batch x sequence = "
              f"{pr['tokens_per_step']:,}), timed as a plain `torch.mm` with the layouts autograd uses "
              "(forward `x @ W.t()`, input gradient `g @ W`, weight gradient `g.t() @ x`) and as the peak is "
              f"measured: into a preallocated output (`out=`), {r['torch_threads']} torch threads, after warm-up, "
              f"best of {r['timing_repeats']} timings of batches of at least 10 ms; \"in the model\" is the same "
              "shape's mean time per call in a profiled `Trainer.fit()` (two "
              "products with the same operand shapes show their common mean). "
              + ("The shapes and counts match that profile exactly."
                 if r["gemm_shapes_match_trainer_profile"] else
                 "**The shapes or counts differ from the profiled trainer's** (see `trainer_mm_calls_per_step`)."),
              "", "| layer | product | (M x K) @ (K x N) | per step | µs alone | GFLOP/s alone | of peak | "
              "µs in the model |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for g in r["gemms"]:
        rate = g["flops"] / g["seconds"]
        inm = f"{1e6 * g['in_model_seconds']:.0f}" if g.get("in_model_seconds") else "–"
        lines.append(f"| {g['layer']} | {g['pass']} | {g['shape']} | {g['count']} | {1e6 * g['seconds']:.0f} | "
                     f"{_g(rate)} | {rate / peak:.2f} | {inm} |")
    lines.append(f"| all matmuls | | | {sum(g['count'] for g in r['gemms'])} | "
                 f"{1e6 * r['matmul_seconds_alone_per_step']:.0f} | "
                 f"{_g(r['matmul_flops_per_step'] / r['matmul_seconds_alone_per_step'])} | "
                 f"{r['matmul_flops_per_step'] / r['matmul_seconds_alone_per_step'] / peak:.2f} | "
                 f"{1e6 * sec['matmul']:.0f} (profiled step) |")
    for n, v in sq.items():
        lines.append(f"| reference | square | {n}x{n} @ {n}x{n} | | | {_g(v)} | {v / peak:.2f} | |")
    best_square = max(sq.values()) / peak if sq else 1.0
    share = r["timing_cpu_share"]
    lines += ["", f"While these were timed the process got {share:.2f} of the CPU time its "
              f"{r['torch_threads']} threads could use (CPU time ÷ wall time x threads; near 1 when no other job "
              "shares the cores)."]
    if best_square < 0.85 or share < CPU_SHARE_OK:  # not the conditions the peak was measured in
        lines[-1] += (f" **The timings did not run as the peak was measured (the peak's own square sizes, "
                      f"timed alongside, reached {best_square:.2f} of it): another job shared the cores, so "
                      "these rates read low.**")
    at = r["attention"]
    B, H, T, hd = at["shape"]
    lines += ["", f"Attention ({B} x {H} heads x {T} tokens x head dim {hd}, causal), per layer and step; model "
              "FLOPs count the full T x T matrix (PaLM's convention, as flops_per_token), so a kernel that skips "
              "the masked half reaches twice the rate it does arithmetic at:", "",
              "| op | µs alone | model GFLOP/s | of peak |", "|---|---:|---:|---:|",
              f"| SDPA forward | {1e6 * at['sdpa_forward_seconds']:.0f} | "
              f"{_g(at['forward_flops'] / at['sdpa_forward_seconds'])} | "
              f"{at['forward_flops'] / at['sdpa_forward_seconds'] / peak:.2f} |",
              f"| SDPA forward + backward | {1e6 * at['sdpa_train_seconds']:.0f} | "
              f"{_g(at['train_flops'] / at['sdpa_train_seconds'])} | "
              f"{at['train_flops'] / at['sdpa_train_seconds'] / peak:.2f} |",
              f"| per-head QKᵀ as one bmm ({B * H} x {T}x{hd} @ {hd}x{T}) | {1e6 * at['bmm_qk_seconds']:.0f} | "
              f"{_g(at['bmm_flops'] / at['bmm_qk_seconds'])} | {at['bmm_flops'] / at['bmm_qk_seconds'] / peak:.2f} |",
              f"| per-head PV as one bmm ({B * H} x {T}x{T} @ {T}x{hd}) | {1e6 * at['bmm_pv_seconds']:.0f} | "
              f"{_g(at['bmm_flops'] / at['bmm_pv_seconds'])} | {at['bmm_flops'] / at['bmm_pv_seconds'] / peak:.2f} |",
              ""]

    # 4. the levers
    lv = r["levers"]
    if lv:
        n_runs = max(len(row["runs"]) for row in lv.values())
        spread = r["levers_baseline_spread"]
        lines += ["### The levers, side by side", "",
                  f"`scaletrain train gpt` with one setting changed per row, {n_runs} runs per row in "
                  f"{n_runs} passes: the rows in this order, then in reverse (so the preset runs first and last, "
                  "and a drift of the machine shifts every row's median alike). Tokens/s at steady state from the "
                  "trainer's own clock (metrics.jsonl), leaving out warm-up steps (and so compilation), set-up "
                  "and evaluation; each figure is the median of the row's runs (of two, their mean), every run's "
                  "tokens/s beside it. MFU against the fp32 peak, except a bf16 row on a CPU with native bf16 "
                  "(AVX512-BF16 or AMX), which is measured against the bf16 peak (without native bf16, bf16 is "
                  "emulated and its peak is no ceiling). \"vs preset\" divides by the preset's median. ⚠: the row's runs "
                  "differ by more than the preset's own runs do"
                  + (f" ({100 * spread:.1f} %)" if spread is not None else "") + ".", "",
                  "| setting | tokens/step | timed steps | ms/step | tokens/s | runs (tokens/s) | vs preset | "
                  "model GFLOP/s | MFU |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for key, row in lv.items():
            vs = f"{row['vs_preset_tokens_per_second']:.2f}x" if row["vs_preset_tokens_per_second"] else "–"
            each = " / ".join(f"{x['tokens_per_second']:,.0f}" for x in row["runs"])
            lines.append(f"| {row['what']} | {row['tokens_per_step']:,} | {row['timed_steps']} | "
                         f"{1e3 * row['step_seconds']:.1f} | {row['tokens_per_second']:,.0f} | "
                         f"{each}{' ⚠' if row['noisy'] else ''} | {vs} | "
                         f"{_g(row['model_flops_per_second'])} | {row['mfu']:.3f} |")
        lines.append("")

    lines += ["### What it says", ""] + conclusions(r) + [""]
    load = r["load_average"]
    # Judged before the run only: during it the load average counts this benchmark's own threads.
    busy = load["before"][0] > 0.5 * (m["logical_cores"] or 1)
    lines += [f"- Command: `{r['command']}` ({r['minutes']:.0f} min); raw figures under `mfu_account` in "
              "[results/performance.json](results/performance.json).",
              f"- Machine: {m['cpu_model']}, {m['logical_cores']} logical cores, {m['platform']}; torch "
              f"{m['torch_version']}, Python {m['python_version']}, scaletrain {r['versions']['scaletrain']}.",
              f"- Date: {r['date']}. Load average (1 min) before the run: {load['before'][0]:.2f}"
              + (" — **the machine was busy before the run: the speed figures are not valid**." if busy else
                 " (judged before the run only: the value after, "
                 f"{load['after'][0]:.2f}, includes this benchmark's own threads)."),
              END]
    return "\n".join(lines)


def _b_by_op(r: dict) -> str:
    """(b) by op, split into "its shapes" and "in the model" only where both parts are >= 0."""
    b = r["gap_b_by_op_seconds_per_step"]
    mm, at = b["matmuls"], b["attention"]
    text = (f"(b) by op, each its profiled time minus its model FLOPs at the peak rate: matmuls "
            f"{1e3 * mm['below_peak']:.2f} ms, attention {1e3 * at['below_peak']:.2f} ms.")
    what = {"matmuls": ("the matmuls", "their shapes (timed alone, next table)"),
            "attention": ("attention", "the SDPA kernel (timed alone)")}
    for op, part in b.items():
        name, alone = what[op]
        if part["split"]:
            text += (f" Of {name}' {1e3 * part['below_peak']:.2f} ms, {alone} account for "
                     f"{1e3 * part['alone_below_peak']:.2f} ms and running inside the model for "
                     f"{1e3 * part['in_model_beyond_alone']:.2f} ms." if op == "matmuls" else
                     f" Of {name}'s {1e3 * part['below_peak']:.2f} ms, {alone} accounts for "
                     f"{1e3 * part['alone_below_peak']:.2f} ms and running inside the model for "
                     f"{1e3 * part['in_model_beyond_alone']:.2f} ms.")
        elif part["alone_below_peak"] < 0:  # alone faster than the peak: the peak reads low here
            text += (f" For {name} no split into \"{alone}\" and \"inside the model\": timed alone they ran "
                     "faster than the measured peak, so the peak reads low against this timing.")
        else:  # alone slower than the profile's self time of the same ops
            text += (f" For {name} no split into \"{alone}\" and \"inside the model\": timed alone "
                     f"({1e3 * (part['below_peak'] - part['in_model_beyond_alone']):.2f} ms over the peak rate) "
                     "they took longer than the profiled step's self time of the same ops, so the difference says "
                     "how the two timings differ (a disturbed standalone timing; for attention, autograd's work "
                     "around the kernel, which the profile counts under dispatch and Python), not where the "
                     "step's time goes.")
    if mm["below_peak"] + at["below_peak"] < 0:
        text += (" **(b) is below zero: the step's matmuls and attention ran faster than the measured peak, so "
                 "the peak reads low (re-measure it: matmul_peak_flops(refresh=True)).**")
    return text + " The per-shape table below shows which shapes run slow."


def conclusions(r: dict) -> list[str]:
    out = []
    wall, gap = r["profiled_step_seconds"], r["gap_seconds_per_step"]
    rest = {k: v for k, v in gap.items() if not k.startswith("model FLOPs")}
    ranked = sorted(rest.items(), key=lambda kv: -kv[1])
    lost = sum(rest.values())
    out.append(f"- The profiled step reaches MFU {r['mfu_profiled_step']:.2f}"
               + (f" ({r['mfu_unprofiled']:.2f} without the profiler)" if r["mfu_unprofiled"] else "")
               + f"; the other {_pct(lost, wall)} of the step is, largest first: "
               + "; ".join(f"{k} {_pct(v, wall)}" for k, v in ranked) + ".")
    sec = r["categories_seconds_per_step"]
    nm = sorted(((c, sec[c]) for c in NON_MATMUL), key=lambda kv: -kv[1])[:3]
    def top_ops(cat: str) -> str:
        ops = [o for o in r["top_ops"] if o["category"] == cat][:3]
        return ", ".join(f"`{o['name']}` {o['calls_per_step']:.0f} calls {o['ms_per_step']:.1f} ms" for o in ops)

    out.append("- The largest parts of (a): " + "; ".join(f"{c} {_pct(s, wall)} ({top_ops(c)})" for c, s in nm)
               + " (per step).")
    mm_rate = r["matmul_flops_per_step"] / r["matmul_seconds_alone_per_step"]
    peak = r["peak_flops_fp32"]
    worst = sorted((g for g in r["gemms"] if g["seconds"] > g["flops"] / peak),
                   key=lambda g: -(g["seconds"] - g["flops"] / peak) * g["count"])[:3]
    out.append(f"- Matmuls timed alone at the model's shapes reach {mm_rate / peak:.2f} of the peak, in the "
               f"profiled step {r['matmul_flops_per_step'] / sec['matmul'] / peak:.2f}. The shapes that lose the most "
               "time (timed alone) to the peak rate: " + ("; ".join(
                   f"{g['layer']} {g['pass']} ({g['shape']}, {g['flops'] / g['seconds'] / peak:.2f} of peak, "
                   f"{1e3 * (g['seconds'] - g['flops'] / peak) * g['count']:.1f} ms per step)" for g in worst)
                                                         or "none (all at or above the peak)") + ".")
    sdpa = r["sdpa_ops"]
    out.append("- Attention in this fp32 step runs through `F.scaled_dot_product_attention` "
               "(`scaletrain.models.attention.causal_attention`; in bf16 on a CPU it is written out instead, "
               f"see \"Attention on the CPU in bf16\"), as the profile shows: {', '.join(f'`{n}`' for n in sdpa)}."
               if sdpa else
               "- **No SDPA op in the profile**: attention does not run through scaled_dot_product_attention.")
    hr = r["host_reads_per_step"]
    out.append(f"- Host reads (`aten::_local_scalar_dense`, i.e. `.item()`/`float()` on a tensor) in the profiled "
               f"`Trainer.fit()`: {hr['loop']:.1f} per step by the loop itself (the guard's check; the log line's "
               f"values every log.every steps) and {hr['optimizer']:.1f} inside the fused AdamW step (one step "
               f"counter per parameter tensor), {r['host_read_ms_per_step']:.3f} ms per step in all "
               f"({_pct(r['host_read_ms_per_step'] / 1e3, wall)} of the step): with the tensors on the CPU a "
               "read waits for no device" + (", so removing them has nothing to win here."
                                            if r["host_read_ms_per_step"] / 1e3 < 0.01 * wall else "."))
    lv = r["levers"]
    same = {k: v for k, v in lv.items() if v["same_model"] and k != "preset"}

    def listed(rows, ratio_key):
        return "; ".join(f"{v['what']} {v[ratio_key]:.2f}x" + (" (runs disagree: ⚠)" if v["noisy"] else "")
                         for v in rows)
    if same and r["levers_baseline_tokens_per_second"]:
        pays = [v for v in same.values() if v["verdict"] == "faster"]
        loses = [v for v in same.values() if v["verdict"] == "slower"]
        unclear = [v for v in same.values() if v["verdict"] == "unclear"]
        out.append("- Levers on the same model (\"pays\": every run of it beats every preset run by ≥ 5 % "
                   "tokens/s): " + ("pays: " + listed(pays, "vs_preset_tokens_per_second")
                                            if pays else "none pays")
                   + (". Slower in every run: " + listed(loses, "vs_preset_tokens_per_second") if loses else "")
                   + (". No clear difference (some run within 5 % of a preset run): "
                      + listed(unclear, "vs_preset_tokens_per_second") if unclear else "") + ".")
    other = {k: v for k, v in lv.items() if not v["same_model"]}
    if other and r["levers_baseline_mfu"]:
        word = {"faster": "higher in every run", "slower": "lower in every run", "unclear": "no clear difference"}
        out.append("- Other shapes (another model or batch, so MFU compares, not speed): " + "; ".join(
            f"{v['what']}: MFU {v['mfu']:.3f} ({v['vs_preset_mfu']:.2f}x the preset's, {word[v['verdict']]}"
            + (", runs disagree: ⚠" if v["noisy"] else "") + ")" for v in other.values()) + ".")
    if "preset" in lv and len(lv["preset"]["runs"]) > 1:
        first, last = lv["preset"]["runs"][0], lv["preset"]["runs"][-1]
        out.append(f"- Noise: the preset's runs (the first and the last of the levers) differ by "
                   f"{100 * lv['preset']['spread']:.1f} % of their median (the last made "
                   f"{last['tokens_per_second'] / first['tokens_per_second']:.3f}x the first's tokens/s); a row "
                   "whose runs differ by more is marked ⚠, and no row counts as faster or slower unless all its "
                   "runs lie beyond all of the preset's.")
    return out
