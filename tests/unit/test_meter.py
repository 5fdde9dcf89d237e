"""The trainer's window meter: the mean loss of a window, on the CPU read per loss and summed in
double precision, elsewhere (or with a cross-rank reduction) one stack and mean."""

from __future__ import annotations

import math

import pytest
import torch

from scaletrain.train.loop_state import Meter


def test_the_cpu_window_mean_is_the_mean_of_its_losses_and_the_window_restarts():
    torch.manual_seed(0)
    losses = [torch.rand(()) * 10 for _ in range(20)]
    meter = Meter()
    for i, loss in enumerate(losses):
        meter.add(loss, units=64)
    mean, seconds, units = meter.read()
    reference = torch.stack(losses).double().mean().item()
    assert mean == pytest.approx(reference, rel=1e-12, abs=0)  # summed in double: exact to rounding
    assert units == 20 * 64 and seconds >= 0
    assert meter.losses == [] and meter.units == 0
    assert math.isnan(meter.read()[0])  # an empty window (every step dropped) has no mean


def test_a_reduction_gets_the_window_mean_as_one_tensor():
    seen = []

    def reduce(t: torch.Tensor) -> torch.Tensor:  # a stand-in for the cross-rank mean: halve it
        seen.append(t)
        return t / 2

    meter = Meter()
    for v in (1.0, 2.0, 3.0):
        meter.add(torch.tensor(v), units=1)
    mean, _, _ = meter.read(reduce)
    assert len(seen) == 1 and seen[0].dim() == 0
    assert mean == pytest.approx(1.0)  # mean 2.0, halved
