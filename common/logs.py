"""One console handler per log record: take away the root handler that importing Opacus installs.

`opacus/utils/module_utils.py` calls `logging.basicConfig(...)` when it is imported, which gives
the root logger a stderr handler if it has none. Flower's `flwr` logger has its own console
handler and propagates to the root, so in a process that imports Opacus (the ServerApp, the
ClientApp) every Flower record, our `fedseqrec:` round lines included, was printed twice.
Code that imports Opacus only when it needs it (the models' RNN layers, DP-SGD, the ledger's
accountant: a ClientApp without DP starts without Opacus) calls this right after that import.
"""

from __future__ import annotations

import logging

OPACUS_ROOT_FORMAT = "%(asctime)s:%(levelname)s:%(message)s"  # the format Opacus' basicConfig sets


def drop_opacus_root_handler(load: bool = True) -> None:
    """Import Opacus (unless `load` is False: the caller just did) and remove the root handler its
    import added, if any."""
    if load:
        import opacus.utils.module_utils  # noqa: F401 - runs Opacus' basicConfig now, not later

    for handler in list(logging.root.handlers):
        if handler.formatter is not None and handler.formatter._fmt == OPACUS_ROOT_FORMAT:
            logging.root.removeHandler(handler)
