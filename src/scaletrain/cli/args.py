"""argparse types shared by every subcommand: a flag's value is checked while the command line is
parsed, so a bad one ends as one `error: --FLAG: ...` line (exit 2) before anything is read, built
or written.

Upper bounds only stop typos and absurd requests (a run that never ends, an allocation no machine
has); they are the config schema's where the two overlap.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

from scaletrain.config.schema import INT64, brief


def int_in(low: int, high: int = INT64 - 1) -> Callable[[str], int]:
    """An integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text) if len(text) <= 40 else None  # int() of 5,000 digits is refused by Python
        except ValueError:
            value = None
        if value is None:
            raise argparse.ArgumentTypeError(f"expected an integer, got {brief(text)}")
        if not low <= value <= high:
            span = f">= {low}" if high >= INT64 - 1 else f"between {low} and {high:,}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def float_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """A finite number in [low, high] (or an open end): `nan`, `inf` and `1e400` are refused."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {brief(text)}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {brief(text)}")
        below = value < low or (low_open and value == low)
        above = value > high or (high_open and value == high)
        if below or above:
            raise argparse.ArgumentTypeError(f"must be in {left}{_num(low)}, {_num(high)}{right}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


def _num(x: float) -> str:
    return f"{int(x):,}" if x.is_integer() and abs(x) < 1e15 else f"{x:g}"


def temperature(text: str) -> float:
    """0 (greedy) or a sampling temperature in [0.001, 1000]: below, logits / temperature overflow
    float32 to inf and the softmax turns to NaN."""
    value = float_in(0.0, 1e3)(text)
    if 0 < value < 1e-3:
        raise argparse.ArgumentTypeError(f"must be 0 (greedy) or in [0.001, 1000], got {value:g}")
    return value


def utf8_text(text: str) -> str:
    """Text that is valid UTF-8. On Linux undecodable argv bytes reach Python as lone surrogates,
    which the tokenizer and every file we write refuse later, with a traceback."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("not valid UTF-8") from None
    return text
