"""What a command shows while it runs: one progress line redrawn in place on a terminal, plain lines elsewhere.

`LiveLine` owns the progress line of the process that owns the terminal (`fedseqrec federate`
draws the ServerApp's rounds, read from the streamed log; `fedseqrec train` its own epochs). On a
terminal the line is rewritten in place (carriage return, erase to the end of the line) and cut to
the terminal's width; a permanent line (a warning, the final result) is printed above it and the
progress line drawn again below. Where the output is not a terminal (CI logs, files, pipes) nothing
is redrawn: the caller prints plain lines, one per evaluation.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from typing import TextIO

ERASE_LINE = "\r\x1b[K"  # to the line's start, erase to its end (VT100; every terminal emulator in use)


class LiveLine:
    """One line that updates in place on a terminal; `print` puts permanent lines above it."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None, width: int | None = None):
        self.stream = stream or sys.stdout
        self.tty = _isatty(self.stream) if tty is None else tty
        self.width = width  # columns; None: the terminal's, asked at each draw (it may be resized)
        self.text = ""  # the progress line as last drawn ("" = none on screen)

    def show(self, text: str) -> None:
        """Redraw the progress line (a terminal only; elsewhere nothing)."""
        if not self.tty:
            return
        self.text = text
        self.stream.write(ERASE_LINE + _fit(text, self._columns()))
        self.stream.flush()

    def print(self, line: str) -> None:
        """A permanent line: above the progress line on a terminal, which is then drawn again."""
        if self.tty and self.text:
            self.stream.write(ERASE_LINE)
        self.stream.write(line + "\n")
        if self.tty and self.text:
            self.stream.write(_fit(self.text, self._columns()))
        self.stream.flush()

    def _columns(self) -> int:
        return self.width or shutil.get_terminal_size((120, 24)).columns

    def close(self) -> None:
        """Leave the progress line on screen as it was last drawn, and end it."""
        if self.tty and self.text:
            self.stream.write("\n")
            self.stream.flush()
        self.text = ""


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream: not a terminal
        return False


def _fit(text: str, columns: int) -> str:
    """At most columns - 1 characters (a line that fills the last column wraps on some terminals)."""
    limit = max(columns - 1, 10)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def duration(seconds: float) -> str:
    """12m05s, 1h02m: an ETA as the round line writes it."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(max(seconds, 0.0)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class TrainingProgress:
    """`fedseqrec train`'s progress: epoch and batch, seconds per epoch, ETA, the last validation figure.

    On a terminal one line updates in place (batches as they go, at most `redraw` times a second);
    elsewhere one plain line per evaluated epoch. Disabled (`enabled=False`, `--quiet`): nothing."""

    def __init__(self, epochs: int, key: str, *, enabled: bool = True, line: LiveLine | None = None, redraw=0.2):
        self.epochs, self.key, self.enabled = epochs, key, enabled
        self.line = line or LiveLine()
        self.started = time.perf_counter()
        self.redraw = redraw
        self.epoch, self.batch, self.batches, self.loss = 0, 0, 0, float("nan")
        self.done, self.done_at = 0, self.started
        self.last_val: tuple[int, float] | None = None
        self.best: float | None = None
        self._drawn = 0.0

    # -- the per-batch bar that train_epoch drives (tqdm's update / set_postfix)

    def start_epoch(self, epoch: int, batches: int) -> TrainingProgress:
        self.epoch, self.batch, self.batches = epoch, 0, batches
        self._draw(force=True)
        return self

    def update(self, n: int = 1) -> None:
        self.batch += n
        self._draw()

    def set_postfix(self, loss: str | float | None = None, **_) -> None:
        if loss is not None:
            self.loss = float(loss)

    # -- after each epoch

    def end_epoch(self, row: dict) -> None:
        self.done, self.done_at = row["epoch"], time.perf_counter()
        self.loss = row["loss"]
        val = row.get("validation", {}).get(self.key)
        if val is not None:
            self.last_val = (row["epoch"], val)
            self.best = val if self.best is None else max(self.best, val)
        if not self.enabled:
            return
        if self.line.tty:
            self.batch = self.batches
            self._draw(force=True)
        elif val is not None:
            self.line.print(self._plain(val))

    def close(self) -> None:
        if self.enabled:
            self.line.close()

    def _per_epoch(self) -> float:
        """Mean seconds of the epochs done (evaluation included)."""
        return (self.done_at - self.started) / self.done if self.done else float("nan")

    def _eta(self) -> float:
        """The epochs left at that pace, less the time the current one has run."""
        since = time.perf_counter() - self.done_at
        return self._per_epoch() * (self.epochs - self.done) - since if self.done else float("nan")

    def _plain(self, val: float) -> str:
        return (
            f"epoch {self.done}/{self.epochs}: loss {self.loss:.4f}  val {self.key} {val:.4f} (best {self.best:.4f})  "
            f"{self._per_epoch():.1f} s/epoch, ETA {duration(self._eta())}"
        )

    def _draw(self, force: bool = False) -> None:
        if not (self.enabled and self.line.tty):
            return
        now = time.perf_counter()
        if not force and now - self._drawn < self.redraw:
            return
        self._drawn = now
        parts = [f"epoch {self.epoch}/{self.epochs}", f"batch {self.batch}/{self.batches}"]
        if self.done:
            parts.append(f"{self._per_epoch():.1f} s/epoch, ETA {duration(self._eta())}")
        if math.isfinite(self.loss):
            parts.append(f"loss {self.loss:.4f}")
        if self.last_val is not None:
            epoch, val = self.last_val
            parts.append(f"val {self.key} {val:.4f} (epoch {epoch}, best {self.best:.4f})")
        self.line.show("  ".join(parts))
