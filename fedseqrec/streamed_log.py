"""`flwr run --stream`'s output, read by `fedseqrec federate`: every line to the run's log file, what a
person needs on the console.

The ServerApp runs in a child process of the SuperLink (`flwr-simulation`); its records reach this
command only as the text that `flwr run --stream` prints, so the progress line is drawn here, from
the ServerApp's round line (server/loop.py `Progress`), by the process that owns the terminal.

Routing, line by line (a line without a level, such as a traceback's, goes where its record went):
- every line, ANSI colours removed: the run's log file (`RUN_DIR/federate.log`);
- `fedseqrec: round N/T ...`: the progress line (in place on a terminal; elsewhere a plain line for
  each evaluated round and the last round);
- other `fedseqrec:` records, errors, tracebacks and warnings: the console, except Flower's and
  Ray's routine ones (`Manually terminating ClientAppActor`, a library's FutureWarning);
- Flower's per-round records (`configure_train: Sampled 2 nodes`, `aggregate_train: Received ...`),
  `flwr run`'s own chatter and the rest: the log file only, unless `verbose`.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from fedseqrec.console import LiveLine

LOG_FILE = "federate.log"

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Flower's console format: "INFO :      message"; Ray puts "(ClientAppActor pid=123) " before a worker's.
_RECORD = re.compile(r"^(?:\(\w+ pid=\d+\)\s*)?(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*:\s*(.*)$")
_RUN_ID = re.compile(r"Successfully started run (\d+)")
_PY_WARNING = re.compile(r"^(?:\(\w+ pid=\d+\)\s*)?\S+:\d+: \w*Warning: ")
_TRACEBACK = re.compile(r"^(?:\(\w+ pid=\d+\)\s*)?Traceback \(most recent call last\):")
# Routine warnings that ask nothing of the user: Ray ending its actors at the end of a simulation,
# Flower's note on its default federation size (this command sets the size itself).
_ROUTINE = re.compile(r"Manually terminating ClientAppActor|default simulated SuperNodes changed")
_ROUNDS_OVER = re.compile(r"fedseqrec: (?:done;|stopping before round)")
_FAILED = re.compile(r"❌|\berror\b", re.I)  # `flwr run`'s own failure lines have no level


@dataclass(frozen=True)
class RoundLine:
    """What the ServerApp's round line says (server/loop.py `Progress.line`)."""

    round: int
    total: int
    per_round: float | None
    eta: str | None
    validation: tuple[str, float, float] | None  # (metric, value, best)
    epsilon: float | None
    loss: float | None
    clients: str | None

    @classmethod
    def parse(cls, message: str) -> RoundLine | None:
        """The fields of a round line (its parts are two spaces apart); None for any other line."""
        found = re.search(r"fedseqrec: round (\d+)/(\d+)(?:  |$)", message)
        if found is None:
            return None
        fields = {"per_round": None, "eta": None, "validation": None, "epsilon": None, "loss": None, "clients": None}
        for part in message[found.end() :].split("  "):
            part = part.strip()
            if part.startswith("clients "):
                fields["clients"] = part[len("clients ") :]
            elif found_loss := re.fullmatch(r"loss (\S+)", part):
                fields["loss"] = _number(found_loss[1])
            elif speed := re.fullmatch(r"(\S+) s/round, ETA (\S+)", part):
                fields["per_round"], fields["eta"] = _number(speed[1]), speed[2]
            elif (val := re.fullmatch(r"val (\S+) (\S+) \(best (\S+)\)", part)) and _number(val[2]) is not None:
                fields["validation"] = (val[1], _number(val[2]), _number(val[3]) or _number(val[2]))
            elif eps := re.fullmatch(r"epsilon (\S+)", part):
                fields["epsilon"] = _number(eps[1])
        return cls(round=int(found[1]), total=int(found[2]), **fields)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


class StreamedLog:
    """Follow `flwr run --stream`: note the run id and the last round; log every line; show the rest.

    `echo = False` (set while the command stops) keeps the console quiet; the log file still gets
    everything. Each record arrives once: the apps keep a second handler off the root logger
    (common/logs.py)."""

    def __init__(
        self,
        out: TextIO | None = None,
        *,
        log_file: Path | None = None,
        verbose: bool = False,
        tty: bool | None = None,
        width: int | None = None,
    ):
        self.console = LiveLine(out or sys.stdout, tty, width)
        self.log_path = Path(log_file) if log_file else None
        self._log: TextIO | None = None
        self.verbose = verbose
        self.echo = True
        self.run_id: int | None = None
        self.round = 0
        self._last_val: tuple[int, tuple[str, float, float]] | None = None
        self._shown = True  # where the previous record went: a line without a level follows it

    def follow(self, stream: TextIO) -> None:
        try:
            for line in stream:
                self.feed(line.rstrip("\n"))
        finally:
            self.close()

    def feed(self, line: str) -> None:
        plain = ANSI.sub("", line).rstrip()
        self._write_log(plain)
        if started := _RUN_ID.search(plain):
            self.run_id = int(started.group(1))
        progress = RoundLine.parse(plain)
        if progress is not None:
            self.round = max(self.round, progress.round)
            if progress.validation is not None:
                self._last_val = (progress.round, progress.validation)
        if not self.echo:
            return
        if progress is not None:
            self._show_round(plain, progress)
            return
        if self._wanted(plain):
            if _ROUNDS_OVER.search(plain):  # the progress line stays above the run's last words
                self.console.close()
            self.console.print(_message(plain))

    def quiet(self) -> None:
        """Nothing more on the console (the command is stopping); the progress line is ended."""
        self.echo = False
        self.console.close()

    def close(self) -> None:
        self.console.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _write_log(self, line: str) -> None:
        if self.log_path is None:
            return
        if self._log is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "a", encoding="utf-8")  # a resume appends
        self._log.write(line + "\n")
        self._log.flush()

    def _wanted(self, line: str) -> bool:
        """Whether a line (not a round line) belongs on the console; remembers it for the lines that follow."""
        record = _RECORD.match(line)
        if record:
            level, message = record.group(1), record.group(2)
            shown = (
                message.startswith("fedseqrec:")
                or (level in ("WARNING", "ERROR", "CRITICAL") and not _ROUTINE.search(message))
                or self.verbose
            )
        elif _TRACEBACK.match(line):
            shown = True
        elif _PY_WARNING.match(line):
            shown = self.verbose
        elif _RUN_ID.search(line) or line.startswith(("Using SuperLink", "Successfully installed", "Loading")):
            shown = self.verbose
        elif _FAILED.search(line):
            shown = True
        else:  # the rest of a record, a traceback or a warning: where it went
            return self._shown or self.verbose
        self._shown = shown
        return shown

    def _show_round(self, line: str, progress: RoundLine) -> None:
        self._shown = True
        if not self.console.tty:  # plain lines: one per evaluation, and the last round
            if self.verbose or progress.validation is not None or progress.round == progress.total:
                self.console.print(_message(line))
            return
        if self.verbose:
            self.console.print(_message(line))
        self.console.show(live_text(progress, self._last_val))
        if progress.round == progress.total:
            self.console.close()


def live_text(progress: RoundLine, last_val: tuple[int, tuple[str, float, float]] | None) -> str:
    """The progress line on a terminal: round, pace, ETA, the last validation figure, epsilon so far."""
    parts = [f"round {progress.round}/{progress.total}"]
    if progress.per_round is not None:
        parts.append(f"{progress.per_round:.1f} s/round, ETA {progress.eta}")
    if last_val is not None:
        at, (metric, value, best) = last_val
        parts.append(f"val {metric} {value:.4f} (round {at}, best {best:.4f})")
    if progress.epsilon is not None:
        parts.append(f"epsilon {progress.epsilon:.3f}")
    if progress.loss is not None:
        parts.append(f"loss {progress.loss:.4f}")
    if progress.clients is not None:
        parts.append(f"clients {progress.clients}")
    return "  ".join(parts)


def _message(line: str) -> str:
    """A record as the console shows it: Flower's level column dropped from INFO lines."""
    record = _RECORD.match(line)
    if record is None:
        return line
    level, message = record.group(1), record.group(2).strip()
    return message if level == "INFO" else f"{level}: {message}"
