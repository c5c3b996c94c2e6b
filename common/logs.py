"""One console handler per log record: the root logger gets a handler of ours, so that no library adds one.

Two libraries give the root logger a stderr handler of their own when it has none: Opacus calls
`logging.basicConfig(...)` when `opacus/utils/module_utils.py` is imported, and absl (under
Google's dp-accounting) calls `logging.basicConfig()` at its first log call, which the RDP
accountant makes on Poisson-sampled rounds (`fedseqrec: round ...` then also appeared as
`INFO:flwr:fedseqrec: round ...` under server DP with `user-sampling = "poisson"`). Flower's `flwr`
logger has its own console handler and propagates to the root, so in a process with such a root
handler every Flower record was printed twice. `basicConfig` does nothing when the root logger has a
handler: `one_console_handler()` gives it one that prints only what no other handler prints
(records of loggers other than Flower's, WARNING and up, as Python's last-resort handler would).
The ServerApp calls it when imported, before anything imports Opacus or dp-accounting (neither is
imported by a run without DP); code that imports Opacus only when it needs it (the models' RNN
layers, DP-SGD, the ledger's accountant: a ClientApp without DP starts without Opacus) calls
`drop_opacus_root_handler` right after that import, in case a process had no handler of ours yet.
"""

from __future__ import annotations

import logging
import sys

OPACUS_ROOT_FORMAT = "%(asctime)s:%(levelname)s:%(message)s"  # the format Opacus' basicConfig sets
FLOWER_LOGGER = "flwr"


class _OtherLoggers(logging.Handler):
    """Root's handler: WARNING and up from loggers other than Flower's, to whatever sys.stderr is now
    (Flower mirrors stderr into the run's log stream after this is installed)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != FLOWER_LOGGER and not record.name.startswith(FLOWER_LOGGER + ".")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


def one_console_handler() -> None:
    """Remove root handlers that Opacus' or absl's basicConfig installed, and install ours (once)."""
    _drop_basic_config_handlers()
    if not any(isinstance(handler, _OtherLoggers) for handler in logging.root.handlers):
        logging.root.addHandler(_OtherLoggers())


def drop_opacus_root_handler(load: bool = True) -> None:
    """Import Opacus (unless `load` is False: the caller just did), remove the root handler its import
    added, if any, and install ours (`one_console_handler`)."""
    if load:
        import opacus.utils.module_utils  # noqa: F401 - runs Opacus' basicConfig now, not later

    one_console_handler()


def _drop_basic_config_handlers() -> None:
    formats = (OPACUS_ROOT_FORMAT, logging.BASIC_FORMAT)
    for handler in list(logging.root.handlers):
        if type(handler) is logging.StreamHandler and getattr(handler.formatter, "_fmt", None) in formats:
            logging.root.removeHandler(handler)
