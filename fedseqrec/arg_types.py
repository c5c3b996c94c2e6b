"""Command-line number types with their domain declared once: argparse refuses a bad value in one line.

`bounded(int, 1)` accepts integers >= 1; `bounded(float, 0, 1, low_open=True)` floats in (0, 1].
Floats must be finite (no nan, no inf), and a refused value is quoted by a short prefix only.
Paths are checked the same way, while the arguments are parsed and before any work: `output_dir`
(not a file, creatable), `run_dir` and `existing_file` (there, of the right kind), `not_a_file`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from common.errors import FedSeqRecError
from common.outputs import check_output_dir

_SHOWN = 40  # characters of a refused value echoed back


def quoted(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def _describe(kind: type, low, high, low_open: bool, high_open: bool) -> str:
    def number(value) -> str:  # an integer bound in full (4294967295, not 4.29497e+09)
        return str(int(value)) if kind is int else f"{value:g}"

    if high is None:
        return f"{'>' if low_open else '>='} {number(low)}"
    return f"in {'(' if low_open else '['}{number(low)}, {number(high)}{')' if high_open else ']'}"


def bounded(
    kind: type, low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> Callable[[str], int | float]:
    """An argparse `type` for `kind` (int or float) values between `low` and `high` (None: no bound)."""
    domain = _describe(kind, low, high, low_open, high_open)
    name = "an integer" if kind is int else "a finite number"

    def parse(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {name} {domain}, got {quoted(text)}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {name} {domain}, got {quoted(text)}")
        below = value <= low if low_open else value < low
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            raise argparse.ArgumentTypeError(f"expected {name} {domain}, got {quoted(text)}")
        return value

    parse.__name__ = f"{kind.__name__} {domain}"  # argparse names the type in its message
    return parse


class ArgumentError(FedSeqRecError):
    """A path or text argument refused while parsing. Not a ValueError on purpose: argparse turns a
    ValueError from a `type` into its own vague "invalid value" line, and lets this one through whole."""


_MAX_PATH = 4096  # PATH_MAX on Linux; longer fails in the OS with a less helpful message
_MAX_NAME = 255  # bytes in one path component (NAME_MAX)


def _path(text: str, flag: str) -> Path:
    """A path argument the OS can look up: not empty, no NUL byte, not longer than the OS allows."""
    if not text.strip():
        raise ArgumentError(f"{flag}: empty path; pass a file or folder path")
    if "\0" in text:
        raise ArgumentError(f"{flag} {quoted(text)}: a path cannot hold a NUL byte; pass a plain path")
    if len(text) > _MAX_PATH or any(len(part.encode(errors="surrogateescape")) > _MAX_NAME for part in text.split("/")):
        raise ArgumentError(f"{flag} {quoted(text)}: path too long for the file system; pass a shorter path")
    return Path(text)


def output_dir(flag: str) -> Callable[[str], str]:
    """A folder a command will write: not a file, creatable and writable (checked before any work)."""

    def parse(text: str) -> str:
        check_output_dir(_path(text, flag), flag)
        return text

    return parse


def run_dir(flag: str = "RUN_DIR") -> Callable[[str], str]:
    """An existing folder a command reads (a finished run's out-dir)."""

    def parse(text: str) -> str:
        path = _path(text, flag)
        if not path.exists():
            raise ArgumentError(f"{flag} {path}: no such run folder; pass the out-dir of a finished run")
        if not path.is_dir():
            raise ArgumentError(f"{flag} {path}: is a file, not a folder; pass the out-dir of a finished run")
        return text

    return parse


def existing_file(flag: str, what: str = "file") -> Callable[[str], str]:
    """An existing file a command reads (a folder is refused: it names no file)."""

    def parse(text: str) -> str:
        path = _path(text, flag)
        if not path.exists():
            raise ArgumentError(f"{flag} {path}: {what} not found; pass an existing file")
        if path.is_dir():
            raise ArgumentError(f"{flag} {path}: is a folder; pass the {what} inside it")
        return text

    return parse


def existing_path(flag: str, what: str) -> Callable[[str], str]:
    """An existing file or folder (e.g. an export folder or the model file in it)."""

    def parse(text: str) -> str:
        path = _path(text, flag)
        if not path.exists():
            raise ArgumentError(f"{flag} {path}: no such file or folder; pass {what}")
        return text

    return parse


def not_a_file(flag: str) -> Callable[[str], str]:
    """A folder that may not exist yet but must not be a file (a device's state dir)."""

    def parse(text: str) -> str:
        path = _path(text, flag)
        if path.exists() and not path.is_dir():
            raise ArgumentError(f"{flag} {path}: is a file, not a folder; pass a folder path or move the file away")
        return text

    return parse


def short_name(flag: str, longest: int = 100) -> Callable[[str], str]:
    """A short printable name (a study's name): no control characters, not empty."""

    def parse(text: str) -> str:
        if not text.strip() or len(text) > longest or not text.isprintable():
            raise ArgumentError(
                f"{flag} {quoted(text)}: expected a printable name of 1 to {longest} characters; pass a shorter name"
            )
        return text

    return parse
