"""Errors a user can act on: each says what was wrong, where, and what to do."""


def brief(exc: BaseException, limit: int = 90) -> str:
    """The first sentence of a library's error message, short enough for a one-line error."""
    text = " ".join(str(exc).split())
    text = text.split(". ")[0]
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + "..."


class FedSeqRecError(Exception):
    """Base class for errors that the CLI reports as one readable line (exit code 2)."""


class ConfigError(FedSeqRecError, ValueError):
    """An unknown, mistyped or out-of-range configuration key."""


class DataError(FedSeqRecError, ValueError):
    """An interactions file that cannot be read as user-item-time rows."""


class OutputError(FedSeqRecError):
    """An output path that cannot be written: a file in the way, no permission, a full disk."""


class CheckpointError(OutputError):
    """A checkpoint that cannot be written or read back; the run stops rather than go on unresumable."""
