"""Command-line number types with their domain declared once: argparse refuses a bad value in one line.

`bounded(int, 1)` accepts integers >= 1; `bounded(float, 0, 1, low_open=True)` floats in (0, 1].
Floats must be finite (no nan, no inf), and a refused value is quoted by a short prefix only.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

_SHOWN = 40  # characters of a refused value echoed back


def _show(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def _describe(low, high, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def bounded(
    kind: type, low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> Callable[[str], int | float]:
    """An argparse `type` for `kind` (int or float) values between `low` and `high` (None: no bound)."""
    domain = _describe(low, high, low_open, high_open)
    name = "an integer" if kind is int else "a finite number"

    def parse(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {name} {domain}, got {_show(text)}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {name} {domain}, got {_show(text)}")
        below = value <= low if low_open else value < low
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            raise argparse.ArgumentTypeError(f"expected {name} {domain}, got {_show(text)}")
        return value

    parse.__name__ = f"{kind.__name__} {domain}"  # argparse names the type in its message
    return parse
