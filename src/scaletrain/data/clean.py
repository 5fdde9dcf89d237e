"""Document cleaning: Unicode normalization and quality filters, each optional.

`Cleaner.apply(text)` returns the normalized text, or the name of the first filter that rejects
it; the caller counts rejections per name, so stats.json says what each step removed. Filters
run cheapest first, so most rejected documents cost one length check.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Neither a letter/digit nor whitespace: punctuation, symbols, underscores, control characters.
_NON_ALNUM = re.compile(r"[^\w\s]|_")

FILTERS = ("min_chars", "max_chars", "max_line_chars", "max_non_alnum_fraction",
           "max_repeated_line_fraction")


@dataclass(frozen=True)
class CleanSpec:
    normalize: str | None = "NFC"  # "NFC", "NFKC" or None
    min_chars: int | None = None
    max_chars: int | None = None
    max_line_chars: int | None = None
    max_non_alnum_fraction: float | None = None
    max_repeated_line_fraction: float | None = None


def non_alnum_fraction(text: str) -> float:
    """Fraction of the non-whitespace characters that are not letters or digits.

    Whitespace is left out of both counts: indentation is not noise, and code or verse
    would otherwise look like garbage.
    """
    visible = len(text) - sum(text.count(c) for c in " \n\t\r")
    if visible <= 0:
        return 0.0
    return len(_NON_ALNUM.findall(text)) / visible


def repeated_line_fraction(text: str) -> float:
    """Fraction of non-blank lines that repeat an earlier line (boilerplate, spam, logs)."""
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


def max_line_length(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


class Cleaner:
    def __init__(self, spec: CleanSpec) -> None:
        self.spec = spec

    def apply(self, text: str) -> tuple[str, str | None]:
        """(cleaned text, None) when kept, else (text, name of the rejecting filter)."""
        s = self.spec
        if s.normalize and not unicodedata.is_normalized(s.normalize, text):
            text = unicodedata.normalize(s.normalize, text)
        if s.min_chars is not None and len(text) < s.min_chars:
            return text, "min_chars"
        if s.max_chars is not None and len(text) > s.max_chars:
            return text, "max_chars"
        if s.max_line_chars is not None and max_line_length(text) > s.max_line_chars:
            return text, "max_line_chars"
        if s.max_non_alnum_fraction is not None and non_alnum_fraction(text) > s.max_non_alnum_fraction:
            return text, "max_non_alnum_fraction"
        if (s.max_repeated_line_fraction is not None
                and repeated_line_fraction(text) > s.max_repeated_line_fraction):
            return text, "max_repeated_line_fraction"
        return text, None

    def enabled_filters(self) -> list[str]:
        return [name for name in FILTERS if getattr(self.spec, name) is not None]
