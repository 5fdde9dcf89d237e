"""`scaletrain doctor RUN_DIR`: what went wrong in a run, with the evidence and a remedy.

Reads only what a run folder already holds (metrics.jsonl, summary.json, config.yaml), so it works
on finished, stopped and crashed runs alike, and on a run still in progress. Each check is a pure
function of the parsed run returning findings; thresholds are named constants next to the check
that uses them, with the reason for the value.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scaletrain.errors import UserError

KINDS = ("overfitting", "divergence", "nan", "grad_explosion", "lr_too_high", "lr_too_low",
         "data_bound", "low_mfu", "straggler", "memory_pressure", "damaged_log")
SEVERITIES = ("info", "warning", "error")


@dataclass
class Finding:
    kind: str
    severity: str
    summary: str  # one line
    evidence: str  # steps and numbers, readable
    remedy: str
    data: dict = field(default_factory=dict)  # the same evidence as raw numbers, for scripts

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Run:
    path: Path
    train: list[dict]  # train records in step order
    val: list[dict]  # evaluation records (split "val") in step order
    summary: dict
    config: dict
    damaged: list[tuple[int, str]] = field(default_factory=list)  # (line number, why) in metrics.jsonl
    lines: int = 0  # lines in metrics.jsonl


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _number(x) -> bool:
    """A JSON number (NaN and Inf included: the trainer logs a non-finite loss as it was)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# What each checked field of a metrics record must be; a record that breaks this was not written
# by the trainer (or was damaged), and is set aside and reported instead of crashing a check.
_RECORD_NUMBERS = ("loss", "grad_norm", "val_loss", "lr", "data_wait_fraction", "skipped_steps",
                   "tokens_per_second", "samples_per_second")
_RECORD_NUMBER_LISTS = ("rank_busy_seconds", "rank_step_seconds")
# summary.json keys the checks read; the trainer writes numbers (possibly NaN) there.
_SUMMARY_NUMBERS = ("mfu", "peak_memory_bytes", "tokens_per_second", "samples_per_second",
                    "matmul_peak_flops", "skipped_steps", "steps")
# A run's config.yaml is a few kilobytes; larger is not one the trainer wrote.
MAX_CONFIG_BYTES = 1 << 20


def _record_problem(rec) -> str | None:
    """Why a parsed metrics line is not a record the trainer writes (None: it is)."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    step = rec.get("step")
    if not _finite(step) or step < 0 or step != int(step):
        return f"step {step!r} is not a step number" if len(repr(step)) <= 40 else "step is not a step number"
    if not isinstance(rec.get("split", ""), str):
        return "split is not a string"
    for key in _RECORD_NUMBERS:
        if key in rec and not _number(rec[key]):
            return f"{key} is not a number"
    for key in _RECORD_NUMBER_LISTS:
        if key in rec and not (isinstance(rec[key], list) and all(_finite(v) for v in rec[key])):
            return f"{key} is not a list of numbers"
    if "stragglers" in rec and not (isinstance(rec["stragglers"], list) and
                                    all(_finite(v) and v == int(v) for v in rec["stragglers"])):
        return "stragglers is not a list of ranks"
    return None


def _read_metrics(metrics: Path) -> tuple[list[dict], list[tuple[int, str]], int]:
    """(records, [(line number, why)] of damaged lines, lines in all), read line by line so a
    long run's file is never held whole; a damaged line is evidence, not a reason to stop."""
    records: list[dict] = []
    damaged: list[tuple[int, str]] = []
    number = 0
    try:
        with open(metrics, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    # json reads the NaN/Infinity literals the trainer writes
                    rec = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    damaged.append((number, "not UTF-8 text"))
                    continue
                except (ValueError, RecursionError):
                    damaged.append((number, "not valid JSON"))
                    continue
                problem = _record_problem(rec)
                if problem:
                    damaged.append((number, problem))
                else:
                    records.append(rec)
    except OSError as exc:
        raise UserError(f"doctor: {metrics} cannot be read ({exc.strerror or exc})") from None
    return records, damaged, number


def _read_summary(path: Path) -> dict:
    from scaletrain.untrusted.files import read_json

    summary = read_json(path, what="a run's summary (summary.json)", expect=dict, allow_nonfinite=True)
    for key in _SUMMARY_NUMBERS:
        if key in summary and not _number(summary[key]):
            shown = repr(summary[key]) if len(repr(summary[key])) <= 40 else type(summary[key]).__name__
            raise UserError(f"doctor: {path}: {key!r} must be a number (got {shown})")
    if "stopped_by" in summary and not isinstance(summary["stopped_by"], (str, type(None))):
        raise UserError(f"doctor: {path}: 'stopped_by' must be a string")
    return summary


def _read_config(path: Path) -> dict:
    """The run's resolved config as a mapping of sections (values the checks read are validated
    where they are read: see _cfg)."""
    from scaletrain.config.load import parse_yaml

    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise UserError(f"doctor: {path}: {size:,} bytes, larger than any run's config.yaml")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"doctor: {path}: not UTF-8 text (byte {exc.start}); not a run's config.yaml") from None
    except OSError as exc:
        raise UserError(f"doctor: {path} cannot be read ({exc.strerror or exc})") from None
    try:
        config = parse_yaml(text, f"doctor: {path}")
    except RecursionError:
        raise UserError(f"doctor: {path}: nested too deeply; not a run's config.yaml") from None
    if config is None:
        return {}
    if not isinstance(config, dict) or not all(isinstance(v, (dict, str, type(None))) for v in config.values()):
        raise UserError(f"doctor: {path}: not a mapping of config sections (not a run's config.yaml)")
    return config


def load_run(run_dir: Path | str) -> Run:
    """Parse a run folder; UserError naming the file when it is not a run folder or one of its
    files is not what the trainer writes (a damaged metrics line is reported as a finding)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"doctor: {path} is not a directory (give a run folder)")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"doctor: {metrics} does not exist: {path} is not a run folder")
    records, damaged, lines = _read_metrics(metrics)
    train = sorted((r for r in records if r.get("split") == "train"), key=lambda r: r["step"])
    val = sorted((r for r in records if r.get("split") == "val"), key=lambda r: r["step"])
    summary = _read_summary(path / "summary.json") if (path / "summary.json").exists() else {}
    config = _read_config(path / "config.yaml") if (path / "config.yaml").exists() else {}
    return Run(path, train, val, summary, config, damaged, lines)


def _cfg(run: Run, section: str, key: str, default=None):
    """A scalar setting of the run's config (anything else, e.g. a list planted where a number
    belongs, reads as unknown: the checks only print and compare scalars)."""
    value = run.config.get(section, {})
    value = value.get(key, default) if isinstance(value, dict) else default
    return value if isinstance(value, (int, float, str, bool, type(None))) else default


def _count(x) -> int:
    """A logged count (skipped steps, ranks per node), 0 when it is not a finite number."""
    return int(x) if _finite(x) and x >= 0 else 0


def _steps(items: list[int], limit: int = 8) -> str:
    shown = ", ".join(map(str, items[:limit]))
    return shown + (f", … ({len(items)} in all)" if len(items) > limit else "")


# ---- numerics ---------------------------------------------------------------------------------

def check_nan(run: Run) -> list[Finding]:
    bad = [r["step"] for r in run.train if not _finite(r.get("loss")) or
           ("grad_norm" in r and not _finite(r["grad_norm"]))]
    skipped = max((_count(r.get("skipped_steps")) for r in run.train), default=0)
    skipped = max(skipped, _count(run.summary.get("skipped_steps")))
    stopped = run.summary.get("stopped_by") == "non_finite_loss"
    if not bad and not skipped and not stopped:
        return []
    parts = []
    if bad:
        parts.append(f"non-finite loss or gradient norm logged at step(s) {_steps(bad)}")
    if skipped:
        parts.append(f"{skipped} step update(s) dropped by the guard (skipped_steps in metrics.jsonl)")
    if stopped:
        parts.append(f"the run stopped early (stopped_by=non_finite_loss at step {run.summary.get('steps')})")
    survived = not bad and not stopped
    return [Finding(
        "nan", "warning" if survived else "error",
        "NaN/Inf in the loss or gradients" + (" (survived: the guard skipped the bad steps)" if survived else ""),
        "; ".join(parts),
        "lower optim.lr (3-10x) or lengthen schedule.warmup_steps; keep train.grad_clip > 0 (now "
        f"{_cfg(run, 'train', 'grad_clip', '?')}); train in bf16, not fp16; check the data for "
        "empty or corrupt samples; guard.action=rollback returns to the last checkpoint with a lower lr",
        {"steps": bad, "skipped_steps": skipped, "stopped": stopped})]


# A logged window mean more than this factor above the median of the windows before it is a spike:
# window means already average log.every steps, so normal noise stays well below 1.3x ...
SPIKE_FACTOR = 1.3
# ... and the jump must be a real part of what the run has learned: more than this share of the drop
# from the first loss to the best so far (a converged classifier's loss of 0.003 going to 0.005 is
# 1.6x, and noise).
SPIKE_SHARE_OF_PROGRESS = 0.1
# Divergence: the loss ends above where it started (error), or has given back more than this share
# of the drop from the first loss to the best (warning). Ending a hair above the best is noise.
GAVE_BACK = 0.5
# ... and only a rise above the best by this share of the first loss counts: batch-to-batch noise
# of a curve that barely moves is no divergence.
MIN_RISE = 0.03


UNIFORM_FACTOR = 1.25  # a language model's loss this far above ln(vocabulary) has blown up


def _uniform_loss(run: Run) -> float | None:
    """ln(V) for a language model's run: the loss of a uniform prediction over the vocabulary."""
    vocab = _cfg(run, "data", "vocab_size", None)
    if _cfg(run, "data", "kind", "text") != "text" or not _finite(vocab) or vocab < 2:
        return None
    return math.log(vocab)


def _losses(run: Run) -> list[tuple[int, float]]:
    return [(r["step"], float(r["loss"])) for r in run.train if _finite(r.get("loss"))]


def _spikes(pts: list[tuple[int, float]]) -> list[tuple[int, float, float]]:
    """(step, loss, median before) of each window well above the windows before it, by a factor and
    by a real share of the progress made so far."""
    spikes = []
    best = pts[0][1] if pts else 0.0
    for i in range(3, len(pts)):
        best = min(best, pts[i - 1][1])
        before = statistics.median(v for _, v in pts[max(0, i - 5):i])
        jump = pts[i][1] - before
        if pts[i][1] > SPIKE_FACTOR * before and jump > SPIKE_SHARE_OF_PROGRESS * max(pts[0][1] - best, 0.0):
            spikes.append((pts[i][0], pts[i][1], before))
    return spikes


def _diverged(pts: list[tuple[int, float]]) -> tuple[bool, bool]:
    """(diverged, worse than at the start): see GAVE_BACK."""
    first, (best_step, best) = pts[0][1], min(pts, key=lambda p: p[1])
    last_step, last = pts[-1]
    if last_step <= best_step:
        return False, False
    if last - best <= MIN_RISE * abs(first):
        return False, False  # a flat, noisy curve (a learning rate too low) rises and falls by noise
    worse = last >= first and last > best
    return worse or last - best > GAVE_BACK * (first - best), worse


def check_divergence(run: Run) -> list[Finding]:
    pts = _losses(run)
    if len(pts) < 4:
        return []
    out = []
    spikes = _spikes(pts)
    first, (best_step, best) = pts[0][1], min(pts, key=lambda p: p[1])
    last_step, last = pts[-1]
    diverged, worse_than_start = _diverged(pts)
    uniform = _uniform_loss(run)
    above = [(s, v) for s, v in pts if uniform and v > UNIFORM_FACTOR * uniform]
    if above and not diverged:
        # Worse than guessing uniformly: the first steps blew the weights up (the first logged
        # window may already be past the blow-up, so "worse than the start" would miss it).
        recovered = pts[-1][1] <= uniform
        out.append(Finding(
            "divergence", "warning" if recovered else "error",
            "the loss went above a uniform guess" + (" (then recovered)" if recovered else ""),
            f"loss {max(v for _, v in above):.4g} at step(s) {_steps([s for s, _ in above])} vs "
            f"ln(vocabulary) = {uniform:.4g}, the loss of predicting every token equally; "
            f"{last:.4g} at step {last_step}",
            "lower optim.lr (3-10x), add schedule.warmup_steps, keep train.grad_clip at ~1.0 (now "
            f"{_cfg(run, 'train', 'grad_clip', '?')}); set guard.spike_factor with guard.action=rollback",
            {"steps": [s for s, _ in above], "uniform_loss": uniform, "max_loss": max(v for _, v in above),
             "last_loss": last}))
        return out
    if diverged:
        gave_back = (last - best) / (first - best) if first > best else math.inf
        out.append(Finding(
            "divergence", "error" if worse_than_start else "warning",
            "the training loss diverged" + (" (worse than at the start)" if worse_than_start else ""),
            f"loss {first:.4g} at step {pts[0][0]}, best {best:.4g} at step {best_step}, "
            f"{last:.4g} at step {last_step} (gave back {100 * min(gave_back, 9.99):.0f} % of the drop "
            "from the start to the best)",
            "lower optim.lr (3-10x), add or lengthen schedule.warmup_steps, keep train.grad_clip at "
            "~1.0, set guard.spike_factor with guard.action=rollback; resume from the checkpoint "
            f"before step {best_step} with the lower lr",
            {"first_loss": first, "best_loss": best, "best_step": best_step, "last_loss": last,
             "last_step": last_step}))
    if spikes and not diverged:
        s0 = spikes[0]
        out.append(Finding(
            "divergence", "warning", f"{len(spikes)} loss spike(s)",
            f"loss at step(s) {_steps([s[0] for s in spikes])} jumped above {SPIKE_FACTOR}x the "
            f"median of the windows before (first: {s0[1]:.4g} vs {s0[2]:.4g} at step {s0[0]})",
            "lower optim.lr or raise schedule.warmup_steps; keep train.grad_clip > 0; set "
            "guard.spike_factor so the trainer skips or rolls back such steps",
            {"spike_steps": [s[0] for s in spikes], "spikes": [[s[0], s[1], s[2]] for s in spikes]}))
    return out


# A gradient norm this many times the median of those before it is an explosion, not noise ...
EXPLOSION_FACTOR = 10.0
# ... if it also exceeds the first logged norm by this factor: a converged model's gradients shrink
# a hundredfold, and one step back at the size they had at the start is no explosion.
EXPLOSION_OVER_START = 2.0


def check_grad_explosion(run: Run) -> list[Finding]:
    norms = [(r["step"], float(r["grad_norm"])) for r in run.train if _finite(r.get("grad_norm"))]
    hits = []
    for i in range(3, len(norms)):
        before = statistics.median(v for _, v in norms[:i])
        if before > 0 and norms[i][1] > EXPLOSION_FACTOR * before and norms[i][1] > EXPLOSION_OVER_START * norms[0][1]:
            hits.append((norms[i][0], norms[i][1], before))
    if not hits:
        return []
    top = max(hits, key=lambda h: h[1] / h[2])
    clip = _cfg(run, "train", "grad_clip", None)
    return [Finding(
        "grad_explosion", "warning", "the gradient norm exploded",
        f"grad_norm above {EXPLOSION_FACTOR:g}x its running median at step(s) {_steps([h[0] for h in hits])} "
        f"(largest: {top[1]:.4g} at step {top[0]} vs median {top[2]:.4g})",
        f"clip gradients (train.grad_clip=1.0; now {clip}), lower optim.lr, lengthen "
        "schedule.warmup_steps; with bf16 keep fp32 master weights and loss in fp32",
        {"steps": [h[0] for h in hits], "largest": top[1], "median_before": top[2]})]


# ---- learning rate ----------------------------------------------------------------------------

LOW_LR_IMPROVEMENT = 0.03  # under 3 % lower loss over >= LOW_LR_MIN_STEPS steps: barely learning
LOW_LR_MIN_STEPS = 20
UPS_FRACTION = 0.4  # more than 40 % of windows going up (by > 2 %) is oscillation, not noise
# Clipping saturation: the gradient norm above CLIP_SATURATION x train.grad_clip in more than
# CLIP_SATURATED_SHARE of the logged steps of the run's second half: every update is cut down.
CLIP_SATURATION = 2.0
CLIP_SATURATED_SHARE = 0.9


def _clip_saturation(run: Run) -> tuple[int, int] | None:
    """(clipped windows, windows) of the second half when clipping is saturated, else None."""
    clip = _cfg(run, "train", "grad_clip", None)
    norms = [float(r["grad_norm"]) for r in run.train if _finite(r.get("grad_norm"))]
    if not _finite(clip) or clip <= 0 or len(norms) < 6:
        return None
    late = norms[len(norms) // 2:]
    over = sum(n > CLIP_SATURATION * clip for n in late)
    return (over, len(late)) if over > CLIP_SATURATED_SHARE * len(late) else None


def check_lr(run: Run, findings: list[Finding]) -> list[Finding]:
    """lr_too_high needs evidence: a divergence (sustained increase, NaN), repeated spikes, clipping
    saturation, or a loss that oscillates without getting anywhere; the ups and downs of a
    converged run are none of these."""
    pts = _losses(run)
    lr = _cfg(run, "optim", "lr", None)
    if len(pts) < 3:
        return []
    diverged = any((f.kind == "divergence" and "spike" not in f.summary) or (f.kind == "nan" and f.severity == "error")
                   for f in findings)
    spikes = [f for f in findings if f.kind == "divergence" and "spike" in f.summary]
    many_spikes = bool(spikes) and len(spikes[0].data.get("spike_steps", [])) >= 2
    ups = [pts[i][0] for i in range(1, len(pts)) if pts[i][1] > pts[i - 1][1] * 1.02]
    oscillating = len(pts) >= 6 and len(ups) / (len(pts) - 1) > UPS_FRACTION
    exploded = any(f.kind == "grad_explosion" for f in findings)
    saturated = _clip_saturation(run)
    stuck = oscillating and pts[-1][1] > pts[0][1] * 0.9
    evidence = ("the run diverged" if diverged else
                f"{len(spikes[0].data['spike_steps'])} loss spikes" if many_spikes else
                f"gradients clipped in {saturated[0]} of the last {saturated[1]} logged steps (norm above "
                f"{CLIP_SATURATION:g}x train.grad_clip)" if saturated else
                "it oscillates, with a gradient explosion" if oscillating and exploded else
                "it oscillates without getting lower" if stuck else None)
    if evidence:
        return [Finding(
            "lr_too_high", "warning", "the learning rate looks too high",
            f"optim.lr={lr}: {evidence}; the loss went up in {len(ups)} of {len(pts) - 1} log windows; loss "
            f"{pts[0][1]:.4g} -> {pts[-1][1]:.4g}",
            f"divide optim.lr by 3-10 (try {_fmt_lr(lr, 0.3)}), or add warm-up; an lr sweep on a short run "
            "(scaletrain bench optim) finds the largest stable value",
            {"lr": lr, "up_steps": ups, "windows": len(pts) - 1, "evidence": evidence})]
    first, best = pts[0][1], min(v for _, v in pts)
    span = pts[-1][0] - pts[0][0]
    gain = (first - best) / abs(first) if first else 0.0
    if span >= LOW_LR_MIN_STEPS and gain < LOW_LR_IMPROVEMENT and not findings_of(findings, "nan"):
        return [Finding(
            "lr_too_low", "warning", "the loss barely moves: the learning rate looks too low",
            f"optim.lr={lr}: loss {first:.4g} at step {pts[0][0]} -> best {best:.4g} over {span} steps "
            f"({100 * gain:.1f} % lower)",
            f"multiply optim.lr by 3-10 (try {_fmt_lr(lr, 3.0)}); check that the schedule is not stuck "
            "in warm-up (schedule.warmup_steps) and that weight decay is not dominating",
            {"lr": lr, "first_loss": first, "best_loss": best, "steps": span})]
    return []


def findings_of(findings: list[Finding], kind: str) -> list[Finding]:
    return [f for f in findings if f.kind == kind]


def _fmt_lr(lr, factor: float) -> str:
    return f"optim.lr={lr * factor:.2g}" if _finite(lr) else "a 3x different optim.lr"


# ---- generalization ---------------------------------------------------------------------------

OVERFIT_RISE = 0.02  # validation loss 2 % above its best, ...
OVERFIT_EVALS_AFTER = 2  # ... at the last of at least this many evaluations after the best


def check_overfitting(run: Run) -> list[Finding]:
    vals = [(r["step"], float(r["val_loss"])) for r in run.val if _finite(r.get("val_loss"))]
    # The final evaluation repeats the last step (on more batches): keep one value per step, the
    # final one, unless early stopping restored earlier weights: the final evaluation measured
    # those, and the step's first evaluation measured the last weights.
    exported, steps = run.summary.get("exported_step"), run.summary.get("steps")
    restored = _finite(exported) and _finite(steps) and exported < steps
    by_step = {}
    for step, v in vals:
        if not (restored and step in by_step):
            by_step[step] = v
    vals = sorted(by_step.items())
    if len(vals) < 3:
        return []
    best_i = min(range(len(vals)), key=lambda i: vals[i][1])
    (best_step, best), (last_step, last) = vals[best_i], vals[-1]
    if len(vals) - 1 - best_i < OVERFIT_EVALS_AFTER or last < best * (1 + OVERFIT_RISE):
        return []
    if restored and exported == best_step:
        return [Finding(  # early stopping exported the best evaluation's weights: nothing was lost
            "overfitting", "info", f"validation loss rose after step {best_step}; early stopping exported "
            "that step's weights",
            f"val_loss best {best:.4g} at step {best_step}, {last:.4g} at step {last_step}",
            "a shorter run (train.max_steps) or more regularisation would save the steps after the best",
            {"best_step": best_step, "best_val_loss": best, "last_step": last_step, "last_val_loss": last})]
    train_at = {r["step"]: float(r["loss"]) for r in run.train if _finite(r.get("loss"))}
    t_best = _nearest(train_at, best_step)
    t_last = _nearest(train_at, last_step)
    if t_best is None or t_last is None or t_last >= t_best:
        return []  # validation worse and training worse too: that is divergence, not overfitting
    wd, drop = _cfg(run, "optim", "weight_decay", "?"), _cfg(run, "model", "dropout", "?")
    frac = _cfg(run, "data", "train_fraction", "?")
    return [Finding(
        "overfitting", "warning", "validation loss rises while training loss falls",
        f"val_loss best {best:.4g} at step {best_step}, {last:.4g} at step {last_step} "
        f"(+{100 * (last / best - 1):.1f} %); train loss {t_best:.4g} -> {t_last:.4g} over the same steps; "
        f"gap val - train at the end {last - t_last:.3g}",
        f"stop at the best step (train.early_stopping=2; the best weights were at step {best_step}); "
        f"raise optim.weight_decay (now {wd}) or model.dropout (now {drop}); more data "
        f"(data.train_fraction now {frac}); or a smaller model",
        {"best_step": best_step, "best_val_loss": best, "last_step": last_step, "last_val_loss": last,
         "train_loss_at_best": t_best, "train_loss_at_last": t_last})]


def _nearest(values: dict[int, float], step: int) -> float | None:
    if not values:
        return None
    return values[min(values, key=lambda s: (abs(s - step), s))]


# ---- speed ------------------------------------------------------------------------------------

DATA_BOUND_FRACTION = 0.2  # a fifth of the step time spent waiting for batches
# ... and at least this long per step: a step of a millisecond that builds its batch in the loop
# (the trainer does so for batches faster than a background thread would be) is not data-bound.
DATA_BOUND_MIN_SECONDS = 2e-3


def _units_per_step(run: Run) -> float | None:
    """Samples (or tokens) per optimizer step, from the summary and config; None when unknown."""
    batch = run.summary.get("global_batch_size")
    if not _finite(batch) or batch <= 0:
        return None
    if "tokens_per_second" in run.summary:
        seq = _cfg(run, "data", "seq_len", None)
        return float(batch) * seq if _finite(seq) and seq > 0 else None
    return float(batch)


def check_data_bound(run: Run) -> list[Finding]:
    # The first window includes the prefetcher's start-up: judge the steady state.
    recs = [r for r in run.train[1:] if _finite(r.get("data_wait_fraction"))] or \
        [r for r in run.train if _finite(r.get("data_wait_fraction"))]
    if not recs:
        return []
    fractions = [float(r["data_wait_fraction"]) for r in recs]
    mean = statistics.fmean(fractions)
    if mean < DATA_BOUND_FRACTION:
        return []
    per_step, unit = _units_per_step(run), "tokens" if "tokens_per_second" in run.summary else "samples"
    rates = [float(r[f"{unit}_per_second"]) for r in recs if _finite(r.get(f"{unit}_per_second"))
             and r[f"{unit}_per_second"] > 0]
    if per_step and rates:  # the wait per step, in seconds
        waited = mean * per_step / statistics.median(rates)
        if waited < DATA_BOUND_MIN_SECONDS:
            return []
    worst = max(recs, key=lambda r: r["data_wait_fraction"])
    return [Finding(
        "data_bound", "error" if mean > 0.5 else "warning", "training is data-bound",
        f"{100 * mean:.0f} % of step time spent waiting for batches (mean over {len(recs)} log windows; "
        f"worst {100 * worst['data_wait_fraction']:.0f} % at step {worst['step']})",
        "prepare the data ahead of time (scaletrain prepare: tokenized, memory-mapped shards), put "
        "shards on local fast storage, move per-sample work out of the loader, or raise the batch so "
        "compute covers the loading time; the trainer already prefetches 2 steps ahead",
        {"mean_fraction": mean, "worst_step": worst["step"], "worst_fraction": worst["data_wait_fraction"]})]


LOW_MFU = 0.05  # below 5 % of the measured matmul peak the hardware mostly idles
LOW_MFU_INFO = 0.2  # well-tuned large-model training reaches 0.3-0.5


# A step whose model FLOPs would take less than this at the measured peak is too small to fill the
# device: its matrices are small (a 64-wide layer runs far below peak), and the per-step work of any
# loop (the Python side, kernel launches, the optimizer, ~1 ms) and the non-matmul work weigh as
# much as the matmuls; its MFU is low whatever is tuned, so a low figure is information, not a
# fault. (The tiny presets: 0.07 ms for mlp-digits, 9 ms for gpt-tiny on a 100 GFLOP/s CPU; the
# gpt preset: ~150 ms.)
SMALL_STEP_SECONDS = 20e-3


def check_mfu(run: Run) -> list[Finding]:
    mfu = run.summary.get("mfu")
    if not _finite(mfu) or mfu >= LOW_MFU_INFO:
        return []
    unit = "tokens" if "tokens_per_second" in run.summary else "samples"
    rate = run.summary.get(f"{unit}_per_second")
    micro = _cfg(run, "train", "batch_size", "?")
    flops, peak, per_step = run.summary.get(f"flops_per_{unit[:-1]}"), run.summary.get("matmul_peak_flops"), \
        _units_per_step(run)
    at_peak = flops * per_step / peak if _finite(flops) and _finite(peak) and peak > 0 and per_step else None
    if at_peak is not None and at_peak < SMALL_STEP_SECONDS:
        return [Finding(
            "low_mfu", "info", f"low model FLOPs utilization ({100 * mfu:.1f} %): a step too small for this device",
            f"mfu {mfu:.3f}: a step's model FLOPs take {1e3 * at_peak:.2f} ms at the measured matmul peak of "
            f"{peak / 1e9:.0f} GFLOP/s: small matrices and the loop's own per-step work weigh as much",
            "nothing to fix for a model this small; a larger train.batch_size raises the figure",
            {"mfu": mfu, "step_seconds_at_peak": at_peak})]
    return [Finding(
        "low_mfu", "warning" if mfu < LOW_MFU else "info", f"low model FLOPs utilization ({100 * mfu:.1f} %)",
        f"mfu {mfu:.3f} against a matmul peak of {run.summary.get('matmul_peak_flops', 0) / 1e9:.0f} GFLOP/s "
        f"({_fmt_rate(rate)} {unit}/s, micro-batch {micro})",
        "raise train.batch_size (bigger matmuls; scaletrain plan says what fits), use bf16 on hardware "
        "with native bf16, train.compile=true, fused optimizers (optim.fused), fewer evaluations and "
        "checkpoints; scaletrain profile shows where the step goes",
        {"mfu": mfu, f"{unit}_per_second": rate})]


def _fmt_rate(rate) -> str:
    return f"{rate:,.0f}" if _finite(rate) else "?"


IMBALANCE = 1.25  # slowest / fastest rank: above this the fast ranks wait a quarter of the time


def check_stragglers(run: Run) -> list[Finding]:
    # Busy time (before the step's first collective) tells ranks apart; whole-step times do not,
    # since every rank waits for the slowest at each gradient synchronization.
    key = "rank_busy_seconds" if any(isinstance(r.get("rank_busy_seconds"), list) for r in run.train) \
        else "rank_step_seconds"
    recs = [r for r in run.train if isinstance(r.get(key), list) and r[key]]
    if not recs:
        return []
    flagged: dict[int, list[int]] = {}
    for r in recs:
        for rank in r.get("stragglers") or []:
            flagged.setdefault(int(rank), []).append(r["step"])
    world = len(recs[0][key])
    mean_times = [statistics.fmean(float(r[key][k]) for r in recs if len(r[key]) > k) for k in range(world)]
    what = "busy time per step" if key == "rank_busy_seconds" else "step time"
    fastest, slowest = min(mean_times), max(mean_times)
    ratio = slowest / fastest if fastest > 0 else math.inf
    times = ", ".join(f"rank {k}: {t * 1000:.1f} ms" for k, t in enumerate(mean_times))
    if flagged:
        worst = max(flagged, key=lambda k: len(flagged[k]))
        return [Finding(
            "straggler", "warning", f"straggler rank(s) {sorted(flagged)}",
            f"rank {worst} flagged in {len(flagged[worst])} of {len(recs)} log windows (step(s) "
            f"{_steps(flagged[worst])}); mean {what} {times}; slowest/fastest {ratio:.2f}x",
            f"look at rank {worst}'s host (other jobs, CPU/GPU clocks, thermal throttling, a slow disk or "
            "NIC); every rank waits for the slowest at each gradient synchronization; restart without "
            "the node (parallel.max_restarts with an elastic launcher) if it persists",
            {"ranks": sorted(flagged), "steps": flagged, "mean_step_seconds": mean_times, "ratio": ratio})]
    if ratio > IMBALANCE:
        slow = mean_times.index(slowest)
        return [Finding(
            "straggler", "info", f"{what} differs between ranks",
            f"mean {what} {times}; slowest/fastest {ratio:.2f}x (rank {slow})",
            "uneven load between ranks: check the hosts and, for pipelines, the split of blocks per stage",
            {"mean_step_seconds": mean_times, "ratio": ratio})]
    return []


# ---- memory -----------------------------------------------------------------------------------

MEMORY_WARNING = 0.85  # of the device (or host) memory; allocator fragmentation eats the rest
MEMORY_ERROR = 0.95


def host_memory_bytes() -> int:
    """This machine's memory: the cgroup limit when one is set (containers), else MemTotal."""
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text.isdigit():
            limit = int(text)
        else:
            limit = None
    except OSError:
        limit = None
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(limit, total) if limit else total


def check_memory(run: Run, device_memory_bytes: int | None) -> list[Finding]:
    peak = run.summary.get("peak_memory_bytes")
    if not _finite(peak) or peak <= 0:
        return []
    on_cpu = _cfg(run, "train", "device", None) != "cuda"  # None: cuda only where one was present
    if device_memory_bytes is None and not on_cpu:
        return []  # a GPU run judged on another machine: give --device-memory
    # CPU ranks of one node share the host's memory; a GPU rank has its device to itself.
    per_node = (_count(_cfg(run, "parallel", "nproc", 1)) or 1) if on_cpu and device_memory_bytes is None else 1
    limit = device_memory_bytes or host_memory_bytes()
    used = peak * per_node
    share = used / limit
    if share < MEMORY_WARNING:
        return []
    what = f"{per_node} ranks x {peak / 2**30:.2f} GiB = " if per_node > 1 else ""
    return [Finding(
        "memory_pressure", "error" if share >= MEMORY_ERROR else "warning", "memory close to the limit",
        f"peak {what}{used / 2**30:.2f} GiB, {100 * share:.0f} % of "
        f"{limit / 2**30:.2f} GiB",
        "parallel.activation_checkpointing=true (activations dominate at large batches), a smaller "
        "train.batch_size with train.grad_accum keeping the global batch, parallel.strategy=fsdp "
        "(shards parameters, gradients and optimizer state) or zero1, parallel.cpu_offload=true; "
        "scaletrain plan CONFIG --device-memory GB lists the layouts that fit",
        {"peak_bytes": peak, "ranks_per_node": per_node, "limit_bytes": limit, "fraction": share})]


# ---- the log itself ---------------------------------------------------------------------------

def check_damaged_log(run: Run) -> list[Finding]:
    """Lines of metrics.jsonl that are not trainer records. A crash can cut the last line (info);
    anything else was damaged or written by something else, and the other checks saw less."""
    if not run.damaged:
        return []
    numbers = [n for n, _ in run.damaged]
    only_last_cut = numbers == [run.lines] and run.damaged[0][1] == "not valid JSON"
    first, why = run.damaged[0]
    return [Finding(
        "damaged_log", "info" if only_last_cut else "warning",
        "the last line of metrics.jsonl is cut (a crash while writing it)" if only_last_cut else
        f"{len(numbers)} line(s) of metrics.jsonl are not trainer records and were skipped",
        f"line(s) {_steps(numbers)} of {run.path / 'metrics.jsonl'} (line {first}: {why})",
        "nothing to do for a cut last line; otherwise check what else writes into the run folder "
        "(the findings above come from the lines that could be read)",
        {"lines": numbers, "reasons": [w for _, w in run.damaged[:20]]})]


# ---- all together -----------------------------------------------------------------------------

def diagnose(run: Run, *, device_memory_bytes: int | None = None) -> list[Finding]:
    findings: list[Finding] = []
    findings += check_nan(run)
    findings += check_divergence(run)
    findings += check_grad_explosion(run)
    findings += check_lr(run, findings)
    findings += check_overfitting(run)
    findings += check_data_bound(run)
    findings += check_mfu(run)
    findings += check_stragglers(run)
    findings += check_memory(run, device_memory_bytes)
    findings += check_damaged_log(run)
    order = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    return sorted(findings, key=lambda f: order[f.severity])


def format_text(run: Run, findings: list[Finding]) -> str:
    steps = run.train[-1]["step"] if run.train else 0
    head = (f"doctor: {run.path} ({steps} steps logged in {len(run.train)} train and {len(run.val)} "
            f"eval records{'' if run.summary else '; no summary.json: the run did not finish'})")
    if not findings:
        return head + "\nno problems found"
    lines = [head]
    for f in findings:
        lines += [f"[{f.severity}] {f.kind}: {f.summary}", f"    evidence: {f.evidence}",
                  f"    remedy:   {f.remedy}"]
    return "\n".join(lines)
