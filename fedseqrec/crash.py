"""The last guard of `fedseqrec`: an unexpected exception (a bug, not bad input) becomes one line.

Bad input raises FedSeqRecError, which the CLI prints as `fedseqrec: error: ...` (exit 2). Anything
else is a fault of fedseqrec itself: the user gets one line saying what failed and where the full
traceback was written, `$FEDSEQREC_CACHE/errors/<UTC time>-<pid>.txt` (default
`~/.cache/fedseqrec/errors/`), to attach to a bug report; exit code 70 (EX_SOFTWARE).
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import traceback
from datetime import UTC, datetime
from pathlib import Path

from common.data.files import CACHE_ENV
from common.errors import brief

CRASH_EXIT = 70  # sysexits.h EX_SOFTWARE: an internal software error
_LONGEST = 600  # characters of one error line: a huge value in a message is cut, not echoed whole


def errors_dir() -> Path:
    """Where tracebacks are written: $FEDSEQREC_CACHE/errors, else ~/.cache/fedseqrec/errors."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fedseqrec"
    return Path(root) / "errors"


def one_line(text: str) -> str:
    """A message as one line of bounded length (a message that quotes a file's contents stays short)."""
    text = " ".join(str(text).split())
    return text if len(text) <= _LONGEST else text[: _LONGEST - 3] + "..."


def write_traceback(exc: BaseException, argv: list[str] | None) -> Path | None:
    """The traceback, the command line and the versions in a new file; None if nowhere is writable."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    body = "".join(
        [
            f"fedseqrec {' '.join(sys.argv[1:] if argv is None else argv)}\n",
            f"python {platform.python_version()} on {platform.platform()}\n\n",
            *traceback.format_exception(exc),
        ]
    )
    for folder in (errors_dir(), Path(tempfile.gettempdir()) / "fedseqrec-errors"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{stamp}-{os.getpid()}.txt"
            path.write_text(body, errors="replace")
            return path
        except OSError:
            continue
    return None


def crash_line(exc: BaseException, argv: list[str] | None, command: str | None) -> str:
    """The one line a user sees for an unexpected exception (after the traceback is written)."""
    path = write_traceback(exc, argv)
    where = f"the full traceback is in {path}" if path else "the traceback could not be written anywhere"
    what = f"`fedseqrec {command}`" if command else "fedseqrec"
    detail = brief(exc, 120) or "no message"
    return one_line(
        f"fedseqrec: internal error: {what} failed with {type(exc).__name__} ({detail}); {where}; "
        "this is a bug in fedseqrec, not in your input: please report it with that file"
    )
