"""CPU inference latency, measured side by side.

The machine is shared and noisy, so the models are timed in interleaved rounds (every round runs
each model once per batch size, in a rotating order) at one fixed thread count for all, and the
figure is the median (p50) over rounds: a burst of load hits all models alike, and the median
ignores the rounds it spoils.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn


@torch.inference_mode()
def measure(models: dict[str, nn.Module], make_input: Callable[[int], torch.Tensor], *,
            batches: tuple[int, ...] = (1, 64), rounds: int = 7, warmup: int = 1,
            threads: int = 1) -> dict[str, dict[str, float]]:
    """{model name: {"b1": p50 ms, "b64": p50 ms, ...}} over `rounds` interleaved rounds."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = {b: make_input(b) for b in batches}
        for m in models.values():
            for b in batches:
                for _ in range(warmup):
                    m(inputs[b])
        times: dict[str, dict[int, list[float]]] = {n: {b: [] for b in batches} for n in models}
        names = list(models)
        for r in range(rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for b in batches:
                for name in order:
                    start = time.perf_counter()
                    models[name](inputs[b])
                    times[name][b].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return {n: {f"b{b}": 1000.0 * statistics.median(ts) for b, ts in per.items()} for n, per in times.items()}
